//! Session identities: what tells one login's session apart from every
//! other — a newer login to the same full JID, a session on another node.
//! It owns only the identity; who holds which session is the Router's.

use std::fmt;

/// One session's identity: 128 random bits, so a second node never
/// repeats one (a per-process counter would) and nobody can guess
/// another's. Compared, hashed and logged; it carries no meaning.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(u128);

impl SessionId {
    /// A new identity, unique with overwhelming probability.
    pub fn random() -> SessionId {
        SessionId(rand::random())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_and_print_as_32_hex_digits() {
        let (a, b) = (SessionId::random(), SessionId::random());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert!(a.to_string().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
