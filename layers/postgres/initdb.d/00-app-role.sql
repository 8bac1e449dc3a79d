-- Creates the application role and database.
-- Run by entrypoint.sh as the superuser, connected to "postgres", with the psql
-- variables app_user and app_db; the password is read from the environment
-- (APP_DB_PASSWORD) with \getenv so that it never appears on a command line.
-- app_user = '' means: no application role.
--
-- The database (and so its public schema, owned by pg_database_owner) stays owned
-- by postgres: a schema owner may drop any table in it, and the app role must only
-- read and write rows (grants in 10-schema.sql and 20-backup-functions.sql).

CREATE DATABASE :"app_db" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;

SELECT :'app_user' <> '' AS have_app_user \gset
\if :have_app_user
\getenv app_password APP_DB_PASSWORD
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
\unset app_password
GRANT CONNECT, TEMPORARY ON DATABASE :"app_db" TO :"app_user";
\endif
