//! Generated `stepgate.v1` protobuf and gRPC code (from `proto/stepgate/v1/`).

#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items
)]

/// Package `stepgate.v1`.
pub mod v1 {
    tonic::include_proto!("stepgate.v1");

    /// Encoded `FileDescriptorSet` of `stepgate.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("stepgate_descriptor");
}
