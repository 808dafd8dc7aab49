"""The engine: this machine, the engine settings chosen for it, vLLM behind one adapter, the step loop, admission."""
