//! Server reflection, `grpc.reflection.v1` and the older `v1alpha` (grpcurl 1.8.6 and other
//! older tools speak only that one), so a generic client can `list` and `describe` the
//! broker's API with no .proto at hand.
//!
//! It serves the descriptors of `therappai.broker.v1` and `grpc.health.v1`: the schema is
//! public (the .proto is the documented contract), so reflection reveals nothing new and needs
//! no `[[allow]]` rule.

use tonic_reflection::server::{v1, v1alpha};

/// Why reflection could not be set up (a descriptor set that does not decode: a build bug).
pub type ReflectionError = tonic_reflection::server::Error;

/// Both reflection services.
pub fn services() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    ReflectionError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(therappai_broker_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_descriptor_sets_decode() {
        assert!(super::services().is_ok());
    }
}
