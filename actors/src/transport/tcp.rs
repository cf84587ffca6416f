//! The framing of a plain TCP or TLS stream (RFC 6120 §4): our side of the
//! exchange is one XML document, `<stream:stream>` … `</stream:stream>`,
//! whose header declares the `stream` prefix the features and errors use.

use super::Output;
use crate::xmpp::ns;
use bytes::BytesMut;

/// Appends `item`, framed, to `out`.
pub fn frame(item: &Output, out: &mut BytesMut) {
    match item {
        Output::Open { from, id } => {
            out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
            out.extend_from_slice(ns::CLIENT.as_bytes());
            out.extend_from_slice(b"' xmlns:stream='");
            out.extend_from_slice(ns::STREAMS.as_bytes());
            out.extend_from_slice(b"' id='");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"' from='");
            out.extend_from_slice(from.as_bytes());
            out.extend_from_slice(b"' version='1.0' xml:lang='en'>");
        }
        Output::Features(children) => {
            out.extend_from_slice(b"<stream:features>");
            for child in children {
                out.extend_from_slice(child);
            }
            out.extend_from_slice(b"</stream:features>");
        }
        Output::Element(bytes) => out.extend_from_slice(bytes),
        Output::Error(condition) => {
            out.extend_from_slice(b"<stream:error><");
            out.extend_from_slice(condition.as_str().as_bytes());
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(ns::STREAM_ERRORS.as_bytes());
            out.extend_from_slice(b"'/></stream:error>");
        }
        Output::Close => out.extend_from_slice(b"</stream:stream>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::StreamErrorCondition;
    use bytes::Bytes;

    fn framed(items: &[Output]) -> String {
        let mut out = BytesMut::new();
        for item in items {
            frame(item, &mut out);
        }
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_whole_stream() {
        let text = framed(&[
            Output::Open {
                from: "example.com".into(),
                id: "abc".into(),
            },
            Output::Features(vec![Bytes::from_static(
                b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
            )]),
            Output::Element(Bytes::from_static(b"<message xmlns='jabber:client'/>")),
            Output::Error(StreamErrorCondition::Conflict),
            Output::Close,
        ]);
        assert_eq!(
            text,
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='example.com' \
             version='1.0' xml:lang='en'>\
             <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\
             <message xmlns='jabber:client'/>\
             <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
             </stream:stream>"
        );
    }
}
