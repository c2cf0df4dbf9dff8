-- The read-only role Grafana's PostgreSQL datasource logs in as (docker-compose.yml's
-- `grafana-db-user`, psql variables `reader` and `password`). Idempotent: creates the role or
-- resets its password. pg_read_all_data (PostgreSQL 14+) reads every table and view,
-- including those later migrations add; default_transaction_read_only makes a dashboard's
-- query unable to write even through a function.
SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'reader', :'password') \gexec
SELECT format('GRANT pg_read_all_data TO %I', :'reader') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader') \gexec
SELECT format('ALTER ROLE %I SET statement_timeout = %L', :'reader', '30s') \gexec
