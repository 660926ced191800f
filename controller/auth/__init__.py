"""Who may do what: operators (users, roles, sessions, API tokens), devices (enrollment, CA,
certificates, revocation), broker ACLs, command signing and the audit log."""
