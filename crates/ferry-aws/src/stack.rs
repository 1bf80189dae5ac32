//! The deployed vendor stack's outputs, read once with CloudFormation `DescribeStacks` (for
//! `ferry context add --aws --stack`), and the output names the management commands need,
//! defined once here (tests check them against template.yaml's `Outputs`).
//!
//! This module only reads: it must never create, update or delete a stack, and it never reads
//! a secret (the vendor key secret's ARN is an output; reading the secret is the caller's
//! choice).

use std::collections::BTreeMap;

use aws_config::SdkConfig;

use crate::error::describe;

/// Output: the job table's name.
pub const OUTPUT_TABLE: &str = "JobTableName";
/// Output: the Ferry bus's name.
pub const OUTPUT_BUS: &str = "EventBusName";
/// Output: the install queues' name prefix.
pub const OUTPUT_INSTALL_QUEUE_PREFIX: &str = "InstallQueuePrefix";
/// Output: the sync-reported (report) queue's URL.
pub const OUTPUT_REPORT_QUEUE_URL: &str = "ReportQueueUrl";
/// Output: the vendor ECR registry host.
pub const OUTPUT_VENDOR_REGISTRY: &str = "VendorRegistry";
/// Output: the pull role grants are minted from.
pub const OUTPUT_PULL_ROLE_ARN: &str = "PullRoleArn";
/// Output: the vendor key's secret (its public half is what agents pin).
pub const OUTPUT_VENDOR_KEY_SECRET_ARN: &str = "VendorKeySecretArn";

/// Every output a context reads.
pub const CONTEXT_OUTPUTS: [&str; 7] = [
    OUTPUT_TABLE,
    OUTPUT_BUS,
    OUTPUT_INSTALL_QUEUE_PREFIX,
    OUTPUT_REPORT_QUEUE_URL,
    OUTPUT_VENDOR_REGISTRY,
    OUTPUT_PULL_ROLE_ARN,
    OUTPUT_VENDOR_KEY_SECRET_ARN,
];

/// Why the outputs could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    Refused { message: String },
    #[error("stack {stack} is {status}; wait until it is CREATE_COMPLETE or UPDATE_COMPLETE (or fix its failed deploy) before reading its outputs")]
    NotReady { stack: String, status: String },
}

/// A stack's outputs, by output key.
pub type StackOutputs = BTreeMap<String, String>;

/// The outputs of stack `stack` (name or id), in the region and account of `config`.
pub async fn describe_outputs(config: &SdkConfig, stack: &str) -> Result<StackOutputs, StackError> {
    let client = aws_sdk_cloudformation::Client::new(config);
    let out = client
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| {
            let f = describe("CloudFormation", "DescribeStacks", &e);
            let message = format!(
                "{}; check the stack name ({stack}), --region and the credentials (--profile)",
                f.message
            );
            if f.transient {
                StackError::Unavailable { message }
            } else {
                StackError::Refused { message }
            }
        })?;
    let Some(found) = out.stacks.unwrap_or_default().into_iter().next() else {
        return Err(StackError::Refused {
            message: format!("CloudFormation has no stack {stack} in this region"),
        });
    };
    let status = found
        .stack_status
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    if !matches!(
        status.as_str(),
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "UPDATE_ROLLBACK_COMPLETE"
    ) {
        return Err(StackError::NotReady {
            stack: stack.to_owned(),
            status,
        });
    }
    Ok(found
        .outputs
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| Some((o.output_key?, o.output_value?)))
        .collect())
}
