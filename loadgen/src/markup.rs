//! Cheap scans of the server's XML text, never a parse: an attribute of a
//! start tag. Enough for what the generator reads from any XMPP server.

use memchr::memmem;

/// The value of `name` in a start tag, quoted either way (as it stands in
/// the XML text, entities not decoded).
pub(crate) fn attribute(tag: &[u8], name: &str) -> Option<String> {
    let at = memmem::find(tag, format!(" {name}=").as_bytes())? + name.len() + 2;
    let quote = *tag.get(at)?;
    let value = &tag[at + 1..];
    let end = memchr::memchr(quote, value)?;
    String::from_utf8(value[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_whichever_the_quotes() {
        let tag = b"<iq type='result' id=\"b1\" to='a@b/c'>";
        assert_eq!(attribute(tag, "type").as_deref(), Some("result"));
        assert_eq!(attribute(tag, "id").as_deref(), Some("b1"));
        assert_eq!(attribute(tag, "from"), None);
    }
}
