//! Which first-stage boot program a client gets, by its class and architecture.

use std::path::Path;

use super::packet::ClientClass;

/// TFTP names under the boot-file roots (`images/ipxe/`, then `/usr/lib/ipxe/`).
pub const BIOS_FILE: &str = "undionly.kpxe";
pub const UEFI_X64_FILE: &str = "snponly.efi";
pub const UEFI_ARM64_FILE: &str = "arm64/snponly.efi";

/// Which optional boot programs exist; read from disk at start and on reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootFiles {
    pub arm64: bool,
}

impl BootFiles {
    /// Looks where TFTP serves from: `ipxe_dir`, then Debian's iPXE package, so a file is
    /// offered exactly when TFTP can send it.
    pub fn scan(ipxe_dir: &Path) -> BootFiles {
        let system = Path::new(crate::tftp::path::SYSTEM_IPXE_DIR);
        BootFiles {
            arm64: [ipxe_dir, system]
                .iter()
                .any(|d| d.join(UEFI_ARM64_FILE).is_file()),
        }
    }
}

/// What to put in the boot fields of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    /// TFTP file name or HTTP URL.
    pub file: String,
    /// Served over TFTP (next-server and option 66 apply) rather than HTTP.
    pub tftp: bool,
    pub vendor_class: Option<&'static str>,
    pub ipxe_no_proxydhcp: bool,
}

/// The boot program for a client, or `None` for clients that do not network-boot or whose
/// architecture we have nothing for (they get an address and no boot file).
///
/// `script_url` is the node's iPXE script; `http_base` serves the iPXE binaries for HTTP boot.
pub fn choose(
    class: ClientClass,
    files: BootFiles,
    script_url: &str,
    http_base: &str,
) -> Option<BootChoice> {
    // No option 60 on an address offer for firmware PXE: `PXEClient` without option 43 makes
    // the offer a "BINL" offer, and the client (OVMF, PXE spec) then asks port 4011 for its
    // boot file, which only ProxyDHCP mode answers (OVMF: PXE-E16). A plain offer with a
    // boot file is what PXE clients take from a DHCP server; ProxyDHCP adds `PXEClient`.
    let tftp = |file: &str| BootChoice {
        file: file.to_string(),
        tftp: true,
        vendor_class: None,
        ipxe_no_proxydhcp: false,
    };
    let http = |file: &str| BootChoice {
        file: format!("{http_base}/ipxe/{file}"),
        tftp: false,
        vendor_class: Some("HTTPClient"),
        ipxe_no_proxydhcp: false,
    };
    match class {
        ClientClass::Plain => None,
        ClientClass::Ipxe { .. } => Some(BootChoice {
            file: script_url.to_string(),
            tftp: false,
            vendor_class: None,
            ipxe_no_proxydhcp: true,
        }),
        // RFC 4578 / IANA processor architecture types.
        ClientClass::Pxe { arch: 0 } => Some(tftp(BIOS_FILE)),
        ClientClass::Pxe { arch: 6 | 7 | 9 } => Some(tftp(UEFI_X64_FILE)),
        ClientClass::Pxe { arch: 11 } if files.arm64 => Some(tftp(UEFI_ARM64_FILE)),
        ClientClass::HttpBoot { arch: 16 } => Some(http(UEFI_X64_FILE)),
        ClientClass::HttpBoot { arch: 19 } if files.arm64 => Some(http(UEFI_ARM64_FILE)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "http://10.0.0.2:8080/boot/52-54-00-00-00-01.ipxe";
    const BASE: &str = "http://10.0.0.2:8080";

    #[test]
    fn each_class_gets_its_program() {
        let none = BootFiles::default();
        let bios = choose(ClientClass::Pxe { arch: 0 }, none, SCRIPT, BASE).unwrap();
        assert_eq!((bios.file.as_str(), bios.tftp), ("undionly.kpxe", true));
        let uefi = choose(ClientClass::Pxe { arch: 7 }, none, SCRIPT, BASE).unwrap();
        assert_eq!(uefi.file, "snponly.efi");
        let http = choose(ClientClass::HttpBoot { arch: 16 }, none, SCRIPT, BASE).unwrap();
        assert_eq!(http.file, "http://10.0.0.2:8080/ipxe/snponly.efi");
        assert_eq!(http.vendor_class, Some("HTTPClient"));
        let ipxe = choose(ClientClass::Ipxe { arch: 7 }, none, SCRIPT, BASE).unwrap();
        assert_eq!(ipxe.file, SCRIPT);
        assert!(ipxe.ipxe_no_proxydhcp && !ipxe.tftp);
        assert_eq!(choose(ClientClass::Plain, none, SCRIPT, BASE), None);
    }

    #[test]
    fn arm64_only_when_present() {
        assert_eq!(
            choose(
                ClientClass::Pxe { arch: 11 },
                BootFiles::default(),
                SCRIPT,
                BASE
            ),
            None
        );
        let with = BootFiles { arm64: true };
        assert_eq!(
            choose(ClientClass::Pxe { arch: 11 }, with, SCRIPT, BASE)
                .unwrap()
                .file,
            UEFI_ARM64_FILE
        );
        assert!(
            choose(ClientClass::HttpBoot { arch: 19 }, with, SCRIPT, BASE)
                .unwrap()
                .file
                .ends_with("arm64/snponly.efi")
        );
    }
}
