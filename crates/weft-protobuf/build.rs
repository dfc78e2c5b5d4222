//! Compiles the vendored Kubernetes `generated.proto` files (`proto/`, from the Go modules
//! k8s.io/api and k8s.io/apimachinery v0.32.0) into one descriptor set with protox, a protobuf
//! compiler written in Rust: nothing outside cargo is needed.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/discovery/v1/generated.proto",
    "k8s.io/api/networking/v1/generated.proto",
    "k8s.io/api/networking/v1beta1/generated.proto",
    "k8s.io/api/events/v1/generated.proto",
    "k8s.io/api/autoscaling/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
    "k8s.io/api/authorization/v1/generated.proto",
    "k8s.io/api/authentication/v1/generated.proto",
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let set = protox::Compiler::new(["proto"])
        .and_then(|mut c| {
            c.include_imports(true);
            // Comments too: `markers` reads the code-generator markers (`+listType=map`) from them.
            c.include_source_info(true);
            c.open_files(FILES)?;
            Ok(c.encode_file_descriptor_set())
        })
        .unwrap_or_else(|e| panic!("compiling the Kubernetes .proto files: {e}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("k8s.bin");
    std::fs::write(&out, set).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
