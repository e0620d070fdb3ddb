-- An approval covers the version an admin reviewed, not whatever the
-- author publishes later: installs by other workspaces use this version.
ALTER TABLE connector_templates ADD COLUMN approved_version text;
UPDATE connector_templates SET approved_version = latest_version WHERE review_status = 'approved';
ALTER TABLE connector_templates
    ADD CONSTRAINT connector_templates_approved_version_exists
    FOREIGN KEY (slug, approved_version) REFERENCES connector_template_versions (slug, version)
    DEFERRABLE INITIALLY DEFERRED;
