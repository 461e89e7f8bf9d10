//! Compiles `proto/therappai/broker/v1/broker.proto` with the vendored protoc, generating only
//! the side(s) the enabling crate asked for through features.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    #[expect(clippy::disallowed_methods, reason = "single-threaded build script")]
    unsafe {
        std::env::set_var("PROTOC", protoc)
    };
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let client = std::env::var_os("CARGO_FEATURE_CLIENT").is_some();
    // The descriptor set backs server reflection (grpcurl `list`/`describe` with no .proto).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("therappai_broker_v1.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .build_server(server)
        .build_client(client)
        // These messages carry a password or a token: their Debug is written by hand (lib.rs)
        // so that no `{:?}` anywhere can print the secret.
        .skip_debug([
            ".therappai.broker.v1.LoginRequest",
            ".therappai.broker.v1.GetAccessTokenResponse",
            ".therappai.broker.v1.ReportRejectedRequest",
        ])
        .compile_protos(&["proto/therappai/broker/v1/broker.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
