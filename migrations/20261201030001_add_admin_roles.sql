-- Admins have a role: `viewer` reads everything, `operator` also cancels
-- and re-runs any execution and manages templates, `owner` also manages
-- admins. Existing admins become owners, so nothing they could do changes.
ALTER TABLE saas_admin_users
    ADD COLUMN role text NOT NULL DEFAULT 'owner'
    CONSTRAINT saas_admin_users_role_known CHECK (role IN ('viewer', 'operator', 'owner'));
