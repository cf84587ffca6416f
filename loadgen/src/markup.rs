//! Cheap scans of the server's XML text, never a parse: an attribute of a
//! start tag, the complete top-level elements of a stream, and an element's
//! text. Enough for what the generator reads from any XMPP server
//! (escaped text holds no `<`, and servers send no comments or CDATA).

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

/// One complete top-level piece of what the server sent inside its stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Top<'b> {
    /// An element: its start tag (`<` to `>`) and its whole text.
    Element { tag: &'b [u8], whole: &'b [u8] },
    /// The end tag of the stream itself (`</stream:stream>`).
    End,
}

/// The first complete top-level piece of `text` (which starts inside the
/// stream, after its header) and the bytes it ends at; `None` until all of
/// it has arrived. Text between elements (whitespace keepalives) is
/// skipped.
pub(crate) fn top_element(text: &[u8]) -> Option<(Top<'_>, usize)> {
    let mut depth = 0usize;
    let mut at = 0;
    let mut first = None;
    loop {
        let open = at + memchr::memchr(b'<', &text[at..])?;
        let close = open + tag_end(&text[open..])?;
        at = close + 1;
        match text.get(open + 1)? {
            b'/' if depth == 0 => return Some((Top::End, at)),
            b'/' => depth -= 1,
            b'?' | b'!' => continue,
            _ => {
                first.get_or_insert((open, at));
                if text[close - 1] != b'/' {
                    depth += 1;
                }
            }
        }
        if depth == 0 {
            let (start, tag) = first?;
            return Some((
                Top::Element {
                    tag: &text[start..tag],
                    whole: &text[start..at],
                },
                at,
            ));
        }
    }
}

/// Where the tag starting at `tag[0]` (a `<`) ends: the index of its `>`,
/// quoted attribute values skipped.
fn tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &byte) in tag.iter().enumerate() {
        match (quote, byte) {
            (None, b'\'' | b'"') => quote = Some(byte),
            (Some(open), _) if byte == open => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The name of the element whose start tag is `tag`, prefix included.
pub(crate) fn name(tag: &[u8]) -> &[u8] {
    let rest = &tag[1..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The text of the first `<child>` in `element` (escaped as sent).
pub(crate) fn child_text<'e>(element: &'e [u8], child: &str) -> Option<&'e [u8]> {
    let open = memmem::find(element, format!("<{child}").as_bytes())?;
    let start = open + tag_end(&element[open..])? + 1;
    let len = memmem::find(&element[start..], format!("</{child}>").as_bytes())?;
    Some(&element[start..start + len])
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

    #[test]
    fn top_level_elements_are_found_whole_and_only_whole() {
        let text = b" <r xmlns='urn:xmpp:sm:3'/><message type='chat' id='a>b'>\
            <body>1 2</body><x><y/></x></message></stream:stream>";
        let (first, end) = top_element(text).unwrap();
        assert_eq!(
            first,
            Top::Element {
                tag: b"<r xmlns='urn:xmpp:sm:3'/>",
                whole: b"<r xmlns='urn:xmpp:sm:3'/>"
            }
        );
        let (second, more) = top_element(&text[end..]).unwrap();
        let Top::Element { tag, whole } = second else {
            panic!("{second:?}")
        };
        assert_eq!(name(tag), b"message");
        assert_eq!(attribute(tag, "id").as_deref(), Some("a>b"));
        assert!(whole.ends_with(b"</x></message>"));
        assert_eq!(child_text(whole, "body"), Some(&b"1 2"[..]));
        assert_eq!(top_element(&text[end + more..]), Some((Top::End, 16)));
        // Every prefix of an element is incomplete.
        let message = &text[end..end + more];
        for cut in 0..message.len() {
            assert_eq!(top_element(&message[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn names_keep_their_prefix() {
        assert_eq!(name(b"<stream:error>"), b"stream:error");
        assert_eq!(name(b"<a h='1'/>"), b"a");
        assert_eq!(name(b"<presence/>"), b"presence");
    }
}
