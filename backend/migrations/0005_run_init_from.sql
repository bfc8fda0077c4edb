-- A GFlowNet run started from another run's adapter: that run's id.
ALTER TABLE runs ADD COLUMN init_from TEXT;
