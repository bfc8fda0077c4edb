-- Evaluations during training: a run's `eval_every`, and the task's metrics
-- at each evaluated step (the last one included).
ALTER TABLE runs ADD COLUMN eval_every INTEGER;

CREATE TABLE evals (
    run_id  TEXT NOT NULL REFERENCES runs(id),
    step    INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
