-- A patient's consent to take part in a study (PUT/DELETE /v1/users/{userName}/studies/{id}).
-- It lives on the patient's shard, beside the data it releases. One row per patient and
-- study: a withdrawal sets withdrawn_at, a renewed consent clears it. The anonymizer reads the
-- consents in force in the same snapshot as the rows it extracts.
CREATE TABLE study_consents (
    user_name    text NOT NULL REFERENCES users (user_name),
    study_id     text NOT NULL,
    consented_at timestamptz NOT NULL DEFAULT now(),
    withdrawn_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      integer NOT NULL DEFAULT 1,
    PRIMARY KEY (user_name, study_id)
);

-- A run's participants: the consents of one study in force.
CREATE INDEX study_consents_in_force ON study_consents (study_id, user_name) WHERE withdrawn_at IS NULL;
