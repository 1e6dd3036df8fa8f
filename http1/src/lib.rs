//! HTTP/1.1 at the byte level (RFC 9112), for Ebb's data plane: the framing every hop must
//! agree on, in one place that imports nothing of the proxies around it.
//!
//! - [`head`]: request heads read and checked (Host, target form, `Content-Length`,
//!   `Transfer-Encoding`, persistence, `Expect`, upgrades), refused with a [`Refusal`] naming
//!   the field and rule;
//! - [`length`]: the one `Content-Length` parser;
//! - [`chunked`]: the strict chunked decoder;
//! - [`upstream`]: the request head as the next hop gets it;
//! - [`response`]: response heads, and the head as the client gets it;
//! - [`relay`]: bodies moved to their end and no further; the proxy's own answers;
//! - [`refusal`]: the statuses a proxy decides itself, rendered one way;
//! - [`accept`]: accept loops that back off when the process is out of descriptors.
//!
//! A proxy that and the next hop disagree on where a message ends forwards bytes nobody
//! routed (request smuggling), so every rule here errs on refusing.

pub mod accept;
pub mod chunked;
pub mod head;
pub mod length;
pub mod refusal;
pub mod relay;
pub mod response;
pub mod upstream;

pub use refusal::Refusal;
