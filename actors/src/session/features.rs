//! The stream features a session offers (RFC 6120 §4.3.2): which ones
//! depend on a handful of facts — before or after authentication, TLS,
//! the configuration — so their serialised form is built once per
//! combination and shared by every stream that offers the same set.
//! Building them from `xmpp-parsers` types for each stream was an eighth
//! of a login's CPU.
//!
//! It owns the feature elements only; the session decides which [`Offer`]
//! a stream gets.

use crate::xmpp::{ns, stanza};
use bytes::Bytes;
use minidom::Element;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use xmpp_parsers::bind::BindFeature;
use xmpp_parsers::starttls::StartTls;
use xmpp_parsers::stream_features::StreamFeatures;

/// What a stream is offered at one point of its negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Offer {
    /// Before authentication.
    Negotiating {
        /// STARTTLS, and whether it is required.
        starttls: Option<bool>,
        /// SASL PLAIN (not before TLS when TLS is required).
        plain: bool,
        /// In-band registration (XEP-0077).
        register: bool,
    },
    /// After authentication, before binding.
    Authenticated {
        /// Roster versioning (the roster comes from a backend).
        roster_ver: bool,
        /// Stream management (XEP-0198).
        sm: bool,
        /// Client state indication (XEP-0352).
        csi: bool,
    },
}

/// Every offer's serialised features, built on first use. At most a few
/// dozen entries: an offer is a handful of booleans.
#[derive(Default)]
pub struct FeatureCache(Mutex<HashMap<Offer, Arc<[Bytes]>>>);

impl FeatureCache {
    /// The children of `<stream:features/>` for `offer`, in order.
    pub(crate) fn get(&self, offer: Offer) -> Arc<[Bytes]> {
        // Building is pure: a panic in another thread cannot leave the map
        // half written.
        let mut built = self.0.lock().unwrap_or_else(|p| p.into_inner());
        built
            .entry(offer)
            .or_insert_with(|| serialised(offer))
            .clone()
    }
}

/// Builds `offer`'s features and serialises each.
fn serialised(offer: Offer) -> Arc<[Bytes]> {
    elements(offer)
        .iter()
        .filter_map(|f| stanza::to_bytes(f).ok())
        .collect()
}

/// `offer`'s features as elements, each a child of `<stream:features/>`.
fn elements(offer: Offer) -> Vec<Element> {
    let mut features = StreamFeatures::default();
    match offer {
        Offer::Authenticated {
            roster_ver,
            sm,
            csi,
        } => {
            features.bind = Some(BindFeature { required: false });
            // RFC 3921's session establishment, optional (RFC 6121 has
            // none): old clients look for it.
            let mut session = Element::bare("session", ns::SESSION);
            session.append_child(Element::bare("optional", ns::SESSION));
            features.others.push(session);
            if roster_ver {
                features.others.push(Element::bare("ver", ns::ROSTER_VER));
            }
            if sm {
                features.others.push(Element::bare("sm", ns::SM));
            }
            if csi {
                features.others.push(xmpp_parsers::csi::Feature.into());
            }
        }
        Offer::Negotiating {
            starttls,
            plain,
            register,
        } => {
            features.starttls = starttls.map(|required| StartTls { required });
            if plain {
                features.sasl_mechanisms.insert("PLAIN".to_owned());
            }
            features.in_band_registration = register;
        }
    }
    // xmpp-parsers writes `<mechanisms/>` even when the set is empty; an
    // empty one would offer SASL with no mechanism (before TLS, none is
    // offered at all).
    Element::from(features)
        .children()
        .filter(|f| !(f.is("mechanisms", ns::SASL) && f.children().next().is_none()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(features: &[Bytes]) -> String {
        features
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn each_offer_is_built_once_and_shared() {
        let cache = FeatureCache::default();
        let offer = Offer::Negotiating {
            starttls: Some(false),
            plain: true,
            register: false,
        };
        let first = cache.get(offer);
        assert!(Arc::ptr_eq(&first, &cache.get(offer)));
        let other = cache.get(Offer::Negotiating {
            starttls: None,
            plain: true,
            register: false,
        });
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(text(&first).contains("starttls"));
        assert!(!text(&other).contains("starttls"));
    }

    #[test]
    fn no_empty_mechanisms_before_tls() {
        let features = FeatureCache::default().get(Offer::Negotiating {
            starttls: Some(true),
            plain: false,
            register: false,
        });
        let text = text(&features);
        assert!(text.contains("<required/>"), "{text}");
        assert!(!text.contains("mechanisms"), "{text}");
    }

    #[test]
    fn after_authentication_bind_and_what_is_configured() {
        let features = FeatureCache::default().get(Offer::Authenticated {
            roster_ver: false,
            sm: true,
            csi: false,
        });
        let text = text(&features);
        assert!(text.contains(ns::BIND) && text.contains(ns::SM), "{text}");
        assert!(
            !text.contains(ns::ROSTER_VER) && !text.contains("csi"),
            "{text}"
        );
    }
}
