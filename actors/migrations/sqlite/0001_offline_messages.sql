-- XEP-0160 offline messages: kept for a user with no available resource,
-- delivered in `id` order at their next available presence, then deleted.
CREATE TABLE offline_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The recipient's bare JID, as Gatehouse prints it (lowercase domain).
    owner TEXT NOT NULL,
    -- When it was stored: microseconds since the Unix epoch.
    stored_at INTEGER NOT NULL,
    -- The message as it will be delivered (with its XEP-0203 delay stamp).
    stanza TEXT NOT NULL
);
CREATE INDEX offline_message_owner ON offline_message (owner, id);
