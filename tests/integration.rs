//! Integration tests: the real server on ephemeral ports and Unix sockets, called with the
//! generated tonic clients. One binary, one module per area.

mod it;
