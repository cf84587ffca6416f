//! The XMPP wire layer: namespaces, the incremental stream parser, stanza
//! and stream errors, and serialisation of elements.
//!
//! It owns bytes-to-elements and elements-to-bytes only. It must not know
//! about sessions, authentication or routing.

pub mod budget;
pub mod ns;
pub mod parser;
mod partial;
pub mod stanza;
pub mod stream_error;

pub use budget::PartialStanzaBudget;
pub use parser::{ParseError, StreamEvent, StreamHeader, StreamParser};
pub use partial::StanzaLimits;
pub use stream_error::StreamErrorCondition;
