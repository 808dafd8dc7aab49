"""Scale-out: shares of prefix families across engines, and vLLM engines held by Ray actors."""
