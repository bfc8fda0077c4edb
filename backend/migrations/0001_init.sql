-- Amortize server store: experiments, datasets, runs, their metric series,
-- recent training samples and comparisons. Adapters, checkpoints and replay
-- buffers live as files under <data-dir>/runs/<id>/.

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE datasets (
    name       TEXT PRIMARY KEY,
    task       TEXT NOT NULL,
    lines      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    experiment_id   INTEGER REFERENCES experiments(id),
    task            TEXT NOT NULL,
    method          TEXT NOT NULL,
    status          TEXT NOT NULL,
    step            INTEGER NOT NULL DEFAULT 0,
    steps           INTEGER NOT NULL,
    config          TEXT NOT NULL,
    task_options    TEXT NOT NULL,
    dataset         TEXT,
    eval_samples    INTEGER,
    error           TEXT,
    final_metrics   TEXT,
    checkpoint_step INTEGER,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step   INTEGER NOT NULL,
    point  TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE step_samples (
    run_id  TEXT NOT NULL REFERENCES runs(id),
    step    INTEGER NOT NULL,
    samples TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE comparisons (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request    TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
