//! What a partial stanza really costs on the heap, rxml's own buffers
//! included: this binary's allocator counts the bytes each thread holds.
//!
//! A partial stanza must hold at most four times the bytes it took, plus
//! a constant (rxml's token scratch, and one start tag's attributes at the
//! attribute limit). Before the compact log, 65,000 empty `<a/>` children
//! held ~200 bytes each: 56 times their bytes. Once a stanza completes its
//! tree is built, at the same ~200 bytes an element: what bounds that is
//! `c2s.max_stanza_elements`, whose cost at its cap is checked here too.

use bytes::BytesMut;
use gatehouse_actors::xmpp::{StanzaLimits, StreamEvent, StreamParser};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting per thread the bytes allocated and not
/// yet freed (each test feeds its parser on one thread).
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// The most `HELD` has been since it was last reset.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let _ = HELD.try_with(|held| {
        let now = held.get() + bytes;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// The default `max_stanza_bytes` (256 KiB).
const MAX_STANZA_BYTES: usize = 256 * 1024;

/// The largest `max_stanza_bytes` and `max_stanza_elements` the config
/// allows (`STANZA_BYTES` and `STANZA_ELEMENTS` in src/config.rs).
const STANZA_BYTES_CAP: usize = 16 * 1024 * 1024;
const STANZA_ELEMENTS_CAP: usize = 100_000;

/// What one stanza at the element cap may cost at its peak, once its tree
/// is built (README, `max_stanza_elements`: ~120 MB).
const PEAK_AT_THE_ELEMENT_CAP: usize = 130 * 1000 * 1000;

/// rxml's token scratch (up to 16 KiB while a token is read) and a start
/// tag at the attribute limit (64 attributes at ~150 bytes).
const CONSTANT: usize = 32 * 1024;

/// A parser that has read `HEADER` and is waiting for input; waiting, it
/// gives its scratch back, so what it holds now is an idle stream's.
fn opened(limits: StanzaLimits) -> (StreamParser, BytesMut) {
    let mut parser = StreamParser::new(limits, None);
    let mut buf = BytesMut::with_capacity(8192);
    buf.extend_from_slice(HEADER.as_bytes());
    assert!(matches!(
        parser.next_event(&mut buf),
        Ok(Some(StreamEvent::Open(_)))
    ));
    assert_eq!(parser.next_event(&mut buf), Ok(None));
    (parser, buf)
}

/// Heap bytes the parser holds after reading `HEADER` and then `body`
/// (which never completes the stanza), fed in reads of 4 KiB.
fn held_for(body: &str, limits: StanzaLimits) -> usize {
    let (mut parser, mut buf) = opened(limits);
    let before = HELD.with(Cell::get);
    for chunk in body.as_bytes().chunks(4096) {
        buf.extend_from_slice(chunk);
        assert_eq!(parser.next_event(&mut buf), Ok(None));
    }
    let held = HELD.with(Cell::get) - before;
    drop(parser);
    usize::try_from(held).unwrap_or(0)
}

/// The most heap bytes the parser held while reading `HEADER` and then
/// `stanza` (which completes), the tree it handed out included.
fn peak_for(stanza: &str, limits: StanzaLimits) -> usize {
    let (mut parser, mut buf) = opened(limits);
    let before = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let mut tree = None;
    for chunk in stanza.as_bytes().chunks(4096) {
        buf.extend_from_slice(chunk);
        if let Some(event) = parser.next_event(&mut buf).unwrap() {
            tree = Some(event);
        }
    }
    assert!(matches!(tree, Some(StreamEvent::Element(_))));
    let peak = PEAK.with(Cell::get) - before;
    drop((tree, parser));
    usize::try_from(peak).unwrap_or(0)
}

/// `open`, then `unit` repeated to just under the stanza limit.
fn just_under_the_limit(open: &str, unit: &str) -> String {
    let mut body = open.to_owned();
    let units = (MAX_STANZA_BYTES - 64 - open.len()) / unit.len();
    body.push_str(&unit.repeat(units));
    body
}

#[test]
fn a_partial_stanza_costs_at_most_four_times_its_bytes_on_the_heap() {
    // Only bytes and attributes bind: the shapes fill the whole stanza.
    let limits = StanzaLimits {
        max_bytes: MAX_STANZA_BYTES,
        max_elements: usize::MAX,
        max_attributes: 64,
    };
    let attributes: String = (0..64).map(|i| format!(" a{i}=''")).collect();
    let shapes = [
        ("empty children", just_under_the_limit("<message>", "<a/>")),
        (
            "children with attributes",
            just_under_the_limit("<message>", &format!("<a{attributes}/>")),
        ),
        (
            "nested children with text",
            just_under_the_limit("<message>", "<a><b>x</b></a>"),
        ),
        (
            "long text",
            just_under_the_limit("<message><body>", "text "),
        ),
        (
            "an open start tag at the attribute limit",
            format!("<message><a{attributes}"),
        ),
    ];
    for (shape, body) in &shapes {
        let held = held_for(body, limits);
        assert!(
            held <= 4 * body.len() + CONSTANT,
            "{shape}: {held} bytes held for {} bytes",
            body.len()
        );
        eprintln!("{shape}: {held} bytes held for {} bytes", body.len());
    }
}

#[test]
fn a_stanza_at_the_element_cap_costs_four_times_its_bytes_while_partial_and_a_bounded_tree() {
    // The largest limits the config allows: the elements bind first.
    let limits = StanzaLimits {
        max_bytes: STANZA_BYTES_CAP,
        max_elements: STANZA_ELEMENTS_CAP,
        max_attributes: 64,
    };
    // The cheapest elements on the wire, and the costliest once built: an
    // element with an attribute holds a map (~1.2 KB; more attributes
    // cost more bytes than tree).
    for (shape, unit) in [
        ("empty children", "<a/>"),
        ("children with an attribute", "<a b=''/>"),
    ] {
        // `<message>` counts as one.
        let body = format!("<message>{}", unit.repeat(STANZA_ELEMENTS_CAP - 1));
        let held = held_for(&body, limits);
        assert!(
            held <= 4 * body.len() + CONSTANT,
            "{shape}: {held} bytes held for {} bytes",
            body.len()
        );
        let stanza = format!("{body}</message>");
        let peak = peak_for(&stanza, limits);
        eprintln!(
            "{shape} at the element cap: {held} bytes held for {} bytes while partial, \
             {peak} at the peak once complete ({} bytes an element)",
            body.len(),
            peak / STANZA_ELEMENTS_CAP
        );
        assert!(
            peak <= PEAK_AT_THE_ELEMENT_CAP,
            "{shape}: {peak} bytes at the peak for {} bytes",
            stanza.len()
        );
    }
}
