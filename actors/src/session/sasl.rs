//! SASL PLAIN (RFC 4616) message parsing.

use crate::auth::Password;
use base64::Engine;

/// The credentials in a PLAIN message, the user already normalised with
/// nodeprep.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The authentication identity, nodeprepped.
    pub user: String,
    /// The password, masked in `Debug`.
    pub password: Password,
}

/// Why a PLAIN message was refused before asking any backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// Not base64, not three NUL-separated UTF-8 fields, or an empty field.
    #[error("malformed PLAIN message")]
    Malformed,
    /// The authorization identity names someone else.
    #[error("authorization identity differs from the user")]
    InvalidAuthzid,
    /// The user name is not a valid JID localpart.
    #[error("user name is not a valid localpart")]
    InvalidUser,
}

/// Decodes `base64(authzid NUL authcid NUL passwd)`. The authcid may be a
/// bare localpart or `user@host` for this stream's host; the authzid must
/// be empty or name the same user.
pub fn parse_plain(payload: &str, host: &str) -> Result<PlainCredentials, PlainError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| PlainError::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| PlainError::Malformed)?;
    let mut fields = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(PlainError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(PlainError::Malformed);
    }
    let user = localpart(authcid, host).ok_or(PlainError::InvalidUser)?;
    if !authzid.is_empty() {
        let authz = localpart(authzid, host).ok_or(PlainError::InvalidAuthzid)?;
        if authz != user || authzid.contains('/') {
            return Err(PlainError::InvalidAuthzid);
        }
    }
    Ok(PlainCredentials {
        user,
        password: Password::new(password),
    })
}

/// `user` or `user@host` (with this host) → the user name
/// ([`crate::auth::username`]).
fn localpart(id: &str, host: &str) -> Option<String> {
    let node = match id.split_once('@') {
        Some((node, domain)) if domain.eq_ignore_ascii_case(host) => node,
        Some(_) => return None,
        None => id,
    };
    crate::auth::username(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_forms() {
        let ok = parse_plain(&b64("\0Alice\0pa:ss word"), "localhost").unwrap();
        assert_eq!(ok.user, "alice");
        assert_eq!(ok.password.expose(), "pa:ss word");
        assert_eq!(
            parse_plain(&b64("alice\0alice@localhost\0x"), "localhost")
                .unwrap()
                .user,
            "alice"
        );
        assert_eq!(
            parse_plain(&b64("alice@localhost\0alice\0x"), "localhost")
                .unwrap()
                .user,
            "alice"
        );
    }

    /// Nodeprep once turns U+1D2D into an uppercase `Æ`; the user is the
    /// settled `æ`, the localpart of the JID the session is bound to (found
    /// by the `roster_refresh` fuzz target).
    #[test]
    fn plain_user_is_settled() {
        let ok = parse_plain(&b64("\0x\u{1d2d}\0pw"), "localhost").unwrap();
        assert_eq!(ok.user, "x\u{e6}");
        let jid = jid::BareJid::new(&format!("{}@localhost", ok.user)).unwrap();
        assert_eq!(jid.node().map(|n| n.as_str()), Some(ok.user.as_str()));
    }

    #[test]
    fn plain_refusals() {
        let host = "localhost";
        assert_eq!(parse_plain("!!!", host), Err(PlainError::Malformed));
        assert_eq!(
            parse_plain(&b64("alice\0x"), host),
            Err(PlainError::Malformed)
        );
        assert_eq!(
            parse_plain(&b64("\0alice\0"), host),
            Err(PlainError::Malformed)
        );
        assert_eq!(parse_plain(&b64("\0\0x"), host), Err(PlainError::Malformed));
        assert_eq!(
            parse_plain(&b64("\0a\0b\0c"), host),
            Err(PlainError::Malformed)
        );
        assert_eq!(
            parse_plain(&b64("bob\0alice\0x"), host),
            Err(PlainError::InvalidAuthzid)
        );
        assert_eq!(
            parse_plain(&b64("alice@localhost/r\0alice\0x"), host),
            Err(PlainError::InvalidAuthzid)
        );
        assert_eq!(
            parse_plain(&b64("\0alice@elsewhere\0x"), host),
            Err(PlainError::InvalidUser)
        );
        assert_eq!(
            parse_plain(&b64("\0a b\0x"), host),
            Err(PlainError::InvalidUser)
        );
    }
}
