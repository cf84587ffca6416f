-- XEP-0313 message archives: one per user and one per MUC room, each
-- message once per archive that keeps it, paged in `seq` order.
CREATE TABLE archive_message (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Whose archive: a user's or a room's bare JID, as Gatehouse prints it.
    owner TEXT NOT NULL,
    -- The XEP-0359 stanza id the archive gave the message (random, 128
    -- bits in hex): what clients page by.
    stanza_id TEXT NOT NULL,
    -- The other party's bare JID (for a room: the room), for `with`.
    with_bare TEXT NOT NULL,
    -- The other party's full JID (for a room: the occupant JID), for a
    -- `with` that names a resource.
    with_full TEXT NOT NULL,
    -- When it was archived: microseconds since the Unix epoch.
    stored_at BIGINT NOT NULL,
    -- The message as it was delivered.
    stanza TEXT NOT NULL
);
CREATE UNIQUE INDEX archive_message_id ON archive_message (owner, stanza_id);
CREATE INDEX archive_message_owner ON archive_message (owner, seq);
CREATE INDEX archive_message_age ON archive_message (stored_at);

-- XEP-0313 §6.1 preferences, one row per user who set them.
CREATE TABLE archive_prefs (
    owner TEXT PRIMARY KEY,
    -- always, roster or never.
    default_mode TEXT NOT NULL,
    -- JIDs always archived, one per line.
    always_jids TEXT NOT NULL,
    -- JIDs never archived, one per line.
    never_jids TEXT NOT NULL
);
