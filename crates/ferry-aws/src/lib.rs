//! Ferry's AWS adapters: ferry-core's ports on DynamoDB, SQS, EventBridge, CodeBuild, STS and
//! ECR, through aws-sdk-rust.
//!
//! This is the only crate of the workspace that names an AWS SDK type. It must never log,
//! store or put into an error a secret: ECR tokens, STS credentials and clear grants stay
//! inside [`minter`] and leave it only sealed to an install agent's key.

pub mod agent;
pub mod builder;
#[cfg(feature = "bus")]
pub mod bus;
pub mod config;
mod error;
#[cfg(feature = "iam")]
pub mod grants;
#[cfg(all(feature = "store", feature = "bus"))]
pub mod manage;
pub mod minter;
pub mod queue;
#[cfg(feature = "store")]
pub mod releases;
#[cfg(feature = "cloudformation")]
pub mod stack;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "ecr")]
mod token_vault;

/// Callers hold and pass SDK configs without depending on the SDK crates themselves.
pub use aws_config::SdkConfig;
#[cfg(feature = "codebuild")]
pub use builder::CodeBuildBuilder;
pub use builder::CodeBuildStateChange;
#[cfg(feature = "bus")]
pub use bus::EventBridgeBus;
pub use minter::EcrGrantSettings;
#[cfg(feature = "minter")]
pub use minter::{EcrGrantMinter, EcrRepositories};
pub use queue::{QueueWithDlq, SqsQueue};
#[cfg(feature = "store")]
pub use store::DynamoStore;
