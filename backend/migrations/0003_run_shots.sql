-- Few-shot prompting of a base-model run: worked examples before each prompt.
ALTER TABLE runs ADD COLUMN shots INTEGER;
