// Guests are static executables linked at the ABI's image base (guest.ld).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg-bins=-T{dir}/guest.ld");
    println!("cargo:rerun-if-changed=guest.ld");
}
