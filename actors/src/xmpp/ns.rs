//! XML namespaces Gatehouse speaks (RFC 6120, RFC 6121 and XEPs).

pub const CLIENT: &str = "jabber:client";
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const PING: &str = "urn:xmpp:ping";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const REGISTER: &str = "jabber:iq:register";
/// XEP-0160's disco feature: messages to offline users are kept.
pub const OFFLINE_MESSAGES: &str = "msgoffline";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const HINTS: &str = "urn:xmpp:hints";
pub const CSI: &str = "urn:xmpp:csi:0";
