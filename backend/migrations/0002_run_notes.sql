-- A run's notes: the user's free text (why this run, what to look for).
ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
