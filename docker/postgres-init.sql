-- Run once by the postgres image, when its data volume is first initialised
-- (/docker-entrypoint-initdb.d): one server, two databases.
--   prefect          the Prefect server's database
--   scribeline_lake  the DuckLake catalog of the warehouse (its data files live in s3://scribeline-lake/)
CREATE DATABASE prefect;
CREATE DATABASE scribeline_lake;
