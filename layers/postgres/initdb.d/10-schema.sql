-- Schema of the application database: the jobs table written by the app (rows
-- "queued") and the Celery workers (started/success/failure).
-- The table is created here, not by the app: the app role only gets DML rights.
\connect :"app_db"

CREATE EXTENSION IF NOT EXISTS plpython3u;

CREATE TABLE IF NOT EXISTS public.jobs (
    id          uuid        PRIMARY KEY,               -- also the Celery task id
    kind        text        NOT NULL,                  -- wordcount, add, pyinfo, sleep
    queue       text        NOT NULL DEFAULT 'default',
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status      text        NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'started', 'success', 'failure')),
    result      jsonb,
    error       text,
    worker      text,                                  -- celery node that ran it
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jobs_status_idx ON public.jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created_at_idx ON public.jobs (created_at DESC);

SELECT :'app_user' <> '' AS have_app_user \gset
\if :have_app_user
GRANT USAGE ON SCHEMA public TO :"app_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON public.jobs TO :"app_user";
\endif
