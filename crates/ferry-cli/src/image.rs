//! `ferry image pack|unpack`: parses and prints around ferry-build's FROM-scratch image packer
//! (`ferry_build::scratch`), which is how the `ferry-agent` image is made
//! (`scripts/agent-image.sh`; docs/design/agent-image.md). The result is an OCI image layout
//! that `ferry copy oci:DIR:TAG DST` pushes anywhere.
//!
//! It must never do more than parse flags, call the library and print the digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_build::scratch::{
    pack_scratch_image, unpack_rootfs, ImageUser, PlatformBinary, ScratchImage,
};
use ferry_oci::media::Platform;
use ferry_oci::Reference;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pack static binaries into a FROM-scratch multi-platform image (an OCI layout), reproducibly.
    Pack(PackArgs),
    /// Unpack one platform's root filesystem from an OCI layout (to inspect or test an image).
    Unpack(UnpackArgs),
}

#[derive(Args)]
pub struct PackArgs {
    /// One static binary per platform: `os/arch[/variant]=PATH`, e.g.
    /// `linux/amd64=target/x86_64-unknown-linux-musl/release/ferry-agent`. Repeat per platform.
    #[arg(long = "binary", required = true, value_name = "PLATFORM=PATH")]
    binaries: Vec<String>,
    /// Where the binary goes in the image; it is the entrypoint.
    #[arg(long, default_value = "/usr/local/bin/ferry-agent")]
    path: String,
    /// The CA bundle installed as /etc/ssl/certs/ca-certificates.crt.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    ca_bundle: PathBuf,
    /// The non-root user the image runs as: `name:uid[:gid]`.
    #[arg(long, default_value = "ferry:65532:65532")]
    user: String,
    /// A label (config) and annotation (index): `key=value`. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The output: `oci:DIR:TAG` (an OCI image layout, created if missing).
    #[arg(long)]
    out: String,
}

#[derive(Args)]
pub struct UnpackArgs {
    /// `oci:DIR:TAG`.
    source: String,
    /// The platform to unpack, `os/arch[/variant]`.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// An empty (or missing) directory to unpack into.
    dest: PathBuf,
}

fn layout_ref(input: &str) -> Result<(PathBuf, String)> {
    match input.parse::<Reference>()? {
        Reference::Layout(l) if l.digest.is_none() => {
            let tag = l
                .tag
                .ok_or_else(|| anyhow!("{input}: give a tag, as oci:DIR:TAG"))?;
            Ok((l.dir, tag))
        }
        _ => bail!("{input}: expected an OCI layout with a tag, oci:DIR:TAG"),
    }
}

fn parse_user(input: &str) -> Result<ImageUser> {
    let parts: Vec<&str> = input.split(':').collect();
    let num = |s: &str| {
        s.parse::<u32>()
            .with_context(|| format!("--user {input:?}: {s:?} is not a number"))
    };
    match parts.as_slice() {
        [name, uid] => Ok(ImageUser {
            name: (*name).into(),
            uid: num(uid)?,
            gid: num(uid)?,
        }),
        [name, uid, gid] => Ok(ImageUser {
            name: (*name).into(),
            uid: num(uid)?,
            gid: num(gid)?,
        }),
        _ => bail!("--user {input:?}: expected name:uid[:gid], e.g. ferry:65532:65532"),
    }
}

pub async fn run(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Pack(args) => pack(args).await,
        ImageCommand::Unpack(args) => {
            let (dir, tag) = layout_ref(&args.source)?;
            let platform = Platform::parse(&args.platform)?;
            unpack_rootfs(&dir, &tag, &platform, &args.dest).await?;
            println!(
                "unpacked {} {} into {}",
                args.source,
                args.platform,
                args.dest.display()
            );
            Ok(())
        }
    }
}

async fn pack(args: PackArgs) -> Result<()> {
    let (dir, tag) = layout_ref(&args.out)?;
    let mut binaries = Vec::new();
    for b in &args.binaries {
        let (platform, path) = b.split_once('=').ok_or_else(|| {
            anyhow!("--binary {b:?}: expected PLATFORM=PATH, e.g. linux/arm64=bin/ferry-agent")
        })?;
        binaries.push(PlatformBinary {
            platform: Platform::parse(platform)?,
            path: PathBuf::from(path),
        });
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let image = ScratchImage {
        binaries,
        binary_path: args.path,
        ca_bundle: args.ca_bundle,
        user: parse_user(&args.user)?,
        labels,
    };
    let packed = pack_scratch_image(&image, &dir, &tag).await?;
    for (platform, digest) in &packed.manifests {
        println!("{}/{}\t{digest}", platform.os, platform.architecture);
    }
    // Last line: the index digest alone, for scripts.
    println!("{}", packed.index.digest);
    Ok(())
}
