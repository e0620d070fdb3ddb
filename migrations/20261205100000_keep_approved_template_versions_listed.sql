-- review_status now describes a template's newest version, and other
-- workspaces see approved_version whatever that status is (until it is
-- retired): a version awaiting review no longer hides the approved one.
-- A rejection that withdrew the approved version itself (an admin's
-- reject of an approved template, before a rejection covered only a
-- version awaiting review) stays a withdrawal.
UPDATE connector_templates SET approved_version = NULL
WHERE review_status IN ('pending', 'rejected') AND approved_version = latest_version;
-- The version other workspaces see is never one awaiting review or
-- rejected.
ALTER TABLE connector_templates
    ADD CONSTRAINT connector_templates_unreviewed_version_not_approved
    CHECK (review_status NOT IN ('pending', 'rejected') OR approved_version IS DISTINCT FROM latest_version);
