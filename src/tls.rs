//! TLS set-up shared by every HTTPS client and server in the process.

/// Installs the ring crypto provider as the process default. Must run before any
/// rustls client or server is built (kube, reqwest and the webhook server all use
/// the process default); calling it again is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
