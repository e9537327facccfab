//! EC2 errors: each has its EC2 code and the class of gRPC status it maps to.

use thiserror::Error;

use crate::keypairs::KeyError;
use crate::store::StoreError;

/// The gRPC status class of an error (kept free of tonic; the service maps it to `tonic::Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// The request is wrong whatever the state (gRPC `InvalidArgument`).
    InvalidArgument,
    /// A named resource does not exist (gRPC `NotFound`).
    NotFound,
    /// The resource exists already (gRPC `AlreadyExists`).
    AlreadyExists,
    /// The request is right but the state does not allow it (gRPC `FailedPrecondition`).
    FailedPrecondition,
    /// Refused by a flag on the resource (gRPC `PermissionDenied`).
    PermissionDenied,
    /// No capacity (gRPC `ResourceExhausted`).
    ResourceExhausted,
    /// Not supported by hearth (gRPC `Unimplemented`).
    Unimplemented,
    /// hearthd failed (gRPC `Internal`).
    Internal,
}

/// An error answered to an EC2 call.
#[derive(Debug, Error)]
pub enum Ec2Error {
    /// Instances that do not exist.
    #[error("The instance ID '{0}' does not exist")]
    InstanceNotFound(String),
    /// An instance ID that is not an instance ID.
    #[error("Invalid id: \"{0}\"")]
    InstanceIdMalformed(String),
    /// The instance's state does not allow the call.
    #[error("The instance '{id}' is not in a state from which it can be {action}.")]
    IncorrectInstanceState {
        /// The instance.
        id: String,
        /// What was asked, as a past participle ("started", "stopped", …).
        action: &'static str,
    },
    /// The instance's state does not allow the call (free text).
    #[error("{0}")]
    IncorrectState(String),
    /// A flag on the resource refuses the call (DisableApiTermination).
    #[error("{0}")]
    OperationNotPermitted(String),
    /// A parameter has a value that is not allowed.
    #[error("{0}")]
    InvalidParameterValue(String),
    /// Parameters that may not be used together (or an empty ID list).
    #[error("{0}")]
    InvalidParameterCombination(String),
    /// A required parameter is missing.
    #[error("The request must contain the parameter {0}")]
    MissingParameter(String),
    /// No host has room.
    #[error("{0}")]
    InsufficientInstanceCapacity(String),
    /// DryRun was set and the request would have succeeded.
    #[error("Request would have succeeded, but DryRun flag is set.")]
    DryRunOperation,
    /// A ClientToken was reused with other parameters.
    #[error("The client token '{0}' was used before with different parameters")]
    IdempotentParameterMismatch(String),
    /// An image that does not exist.
    #[error("The image id '[{0}]' does not exist")]
    ImageNotFound(String),
    /// An image ID that is not an image ID.
    #[error("Invalid id: \"{0}\" (expecting \"ami-...\")")]
    ImageIdMalformed(String),
    /// An image name in use.
    #[error("AMI name {0} is already in use by another AMI")]
    ImageNameDuplicate(String),
    /// A key pair that does not exist.
    #[error("The key pair '{0}' does not exist")]
    KeyPairNotFound(String),
    /// A key pair name in use.
    #[error("The keypair '{0}' already exists.")]
    KeyPairDuplicate(String),
    /// A key type, public key or key generation failed (the key module names the EC2 code).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An instance type hearth does not know.
    #[error("The instance type '{0}' does not exist")]
    InvalidInstanceType(String),
    /// A volume that does not exist.
    #[error("The volume '{0}' does not exist.")]
    VolumeNotFound(String),
    /// A volume ID that is not a volume ID.
    #[error("Invalid id: \"{0}\" (expecting \"vol-...\")")]
    VolumeIdMalformed(String),
    /// The volume is attached (DeleteVolume, AttachVolume).
    #[error("{0}")]
    VolumeInUse(String),
    /// The volume's (or snapshot's) state does not allow the call.
    #[error("{0}")]
    ResourceIncorrectState(String),
    /// The encryption key of an encrypted volume or snapshot is missing, unreadable or
    /// malformed: the call fails rather than use the volume without it.
    #[error("The KMS key provided is in an incorrect state: {0}")]
    KmsKeyInvalidState(String),
    /// No such attachment (DetachVolume).
    #[error("{0}")]
    AttachmentNotFound(String),
    /// The volume and the instance are in different availability zones.
    #[error("{0}")]
    VolumeZoneMismatch(String),
    /// A snapshot that does not exist.
    #[error("The snapshot '{0}' does not exist.")]
    SnapshotNotFound(String),
    /// A snapshot ID that is not a snapshot ID.
    #[error("Invalid id: \"{0}\" (expecting \"snap-...\")")]
    SnapshotIdMalformed(String),
    /// A snapshot an image still uses.
    #[error("{0}")]
    SnapshotInUse(String),
    /// An image manifest that cannot be imported (bad format, missing file, checksum).
    #[error("{0}")]
    InvalidManifest(String),
    /// A resource ID of no known kind.
    #[error("The ID '{0}' is not valid")]
    InvalidId(String),
    /// A block device mapping that cannot be honoured.
    #[error("{0}")]
    InvalidBlockDeviceMapping(String),
    /// Something hearth does not do (yet).
    #[error("{0}")]
    UnsupportedOperation(String),
    /// Too many tags on a resource.
    #[error("{0}")]
    TagLimitExceeded(String),
    /// A VPC that does not exist.
    #[error("The vpc ID '{0}' does not exist")]
    VpcNotFound(String),
    /// A malformed VPC ID.
    #[error("Invalid id: \"{0}\" (expecting \"vpc-...\")")]
    VpcIdMalformed(String),
    /// A VPC CIDR that is not allowed.
    #[error("{0}")]
    VpcRange(String),
    /// A subnet that does not exist.
    #[error("The subnet ID '{0}' does not exist")]
    SubnetNotFound(String),
    /// A malformed subnet ID.
    #[error("Invalid id: \"{0}\" (expecting \"subnet-...\")")]
    SubnetIdMalformed(String),
    /// A subnet CIDR outside its VPC or too small/large.
    #[error("{0}")]
    SubnetRange(String),
    /// A subnet CIDR overlapping another subnet.
    #[error("{0}")]
    SubnetConflict(String),
    /// Something still depends on the resource (DeleteVpc, DeleteSubnet).
    #[error("{0}")]
    DependencyViolation(String),
    /// A private address that is taken.
    #[error("{0}")]
    AddressInUse(String),
    /// No free address left in a subnet (or in the public pool).
    #[error("{0}")]
    InsufficientFreeAddresses(String),
    /// A security group that does not exist.
    #[error("The security group '{0}' does not exist")]
    GroupNotFound(String),
    /// A malformed security group ID.
    #[error("Invalid id: \"{0}\" (expecting \"sg-...\")")]
    GroupIdMalformed(String),
    /// A group name already used in the VPC.
    #[error("The security group '{0}' already exists")]
    GroupDuplicate(String),
    /// A group that instances or other groups' rules still use.
    #[error("{0}")]
    GroupInUse(String),
    /// A group reserved name or other refused group request.
    #[error("{0}")]
    GroupReserved(String),
    /// A rule that exists already (Authorize).
    #[error("{0}")]
    PermissionDuplicate(String),
    /// A rule that does not exist (Revoke).
    #[error("{0}")]
    PermissionNotFound(String),
    /// Security groups and instance/subnet in different VPCs.
    #[error("{0}")]
    InvalidGroupVpc(String),
    /// An Elastic IP allocation or address that does not exist.
    #[error("{0}")]
    AddressNotFound(String),
    /// A malformed allocation ID.
    #[error("Invalid id: \"{0}\" (expecting \"eipalloc-...\")")]
    AllocationIdMalformed(String),
    /// An association that does not exist.
    #[error("{0}")]
    AssociationNotFound(String),
    /// A malformed association ID.
    #[error("Invalid id: \"{0}\" (expecting \"eipassoc-...\")")]
    AssociationIdMalformed(String),
    /// The address or instance is associated already (without AllowReassociation).
    #[error("{0}")]
    ResourceAlreadyAssociated(String),
    /// The address pool is used up.
    #[error("{0}")]
    AddressLimitExceeded(String),
    /// The store failed.
    #[error("the state store failed")]
    Store(#[from] StoreError),
    /// A file operation failed.
    #[error("{operation}")]
    Io {
        /// What hearthd was doing.
        operation: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Ec2Error {
    /// The EC2 error code, e.g. `InvalidInstanceID.NotFound`.
    pub fn code(&self) -> &'static str {
        match self {
            Ec2Error::InstanceNotFound(_) => "InvalidInstanceID.NotFound",
            Ec2Error::InstanceIdMalformed(_) => "InvalidInstanceID.Malformed",
            Ec2Error::IncorrectInstanceState { .. } | Ec2Error::IncorrectState(_) => "IncorrectInstanceState",
            Ec2Error::OperationNotPermitted(_) => "OperationNotPermitted",
            Ec2Error::InvalidParameterValue(_) => "InvalidParameterValue",
            Ec2Error::InvalidParameterCombination(_) => "InvalidParameterCombination",
            Ec2Error::MissingParameter(_) => "MissingParameter",
            Ec2Error::InsufficientInstanceCapacity(_) => "InsufficientInstanceCapacity",
            Ec2Error::DryRunOperation => "DryRunOperation",
            Ec2Error::IdempotentParameterMismatch(_) => "IdempotentParameterMismatch",
            Ec2Error::ImageNotFound(_) => "InvalidAMIID.NotFound",
            Ec2Error::ImageIdMalformed(_) => "InvalidAMIID.Malformed",
            Ec2Error::ImageNameDuplicate(_) => "InvalidAMIName.Duplicate",
            Ec2Error::KeyPairNotFound(_) => "InvalidKeyPair.NotFound",
            Ec2Error::KeyPairDuplicate(_) => "InvalidKeyPair.Duplicate",
            Ec2Error::Key(error) => error.code(),
            Ec2Error::InvalidInstanceType(_) => "InvalidInstanceType",
            Ec2Error::VolumeNotFound(_) => "InvalidVolume.NotFound",
            Ec2Error::VolumeIdMalformed(_) => "InvalidVolumeID.Malformed",
            Ec2Error::InvalidId(_) => "InvalidID",
            Ec2Error::VolumeInUse(_) => "VolumeInUse",
            Ec2Error::ResourceIncorrectState(_) => "IncorrectState",
            Ec2Error::KmsKeyInvalidState(_) => "InvalidKMSKey.InvalidState",
            Ec2Error::AttachmentNotFound(_) => "InvalidAttachment.NotFound",
            Ec2Error::VolumeZoneMismatch(_) => "InvalidVolume.ZoneMismatch",
            Ec2Error::SnapshotNotFound(_) => "InvalidSnapshot.NotFound",
            Ec2Error::SnapshotIdMalformed(_) => "InvalidSnapshotID.Malformed",
            Ec2Error::SnapshotInUse(_) => "InvalidSnapshot.InUse",
            Ec2Error::InvalidManifest(_) => "InvalidManifest",
            Ec2Error::InvalidBlockDeviceMapping(_) => "InvalidBlockDeviceMapping",
            Ec2Error::UnsupportedOperation(_) => "UnsupportedOperation",
            Ec2Error::TagLimitExceeded(_) => "TagLimitExceeded",
            Ec2Error::VpcNotFound(_) => "InvalidVpcID.NotFound",
            Ec2Error::VpcIdMalformed(_) => "InvalidVpcID.Malformed",
            Ec2Error::VpcRange(_) => "InvalidVpc.Range",
            Ec2Error::SubnetNotFound(_) => "InvalidSubnetID.NotFound",
            Ec2Error::SubnetIdMalformed(_) => "InvalidSubnetID.Malformed",
            Ec2Error::SubnetRange(_) => "InvalidSubnet.Range",
            Ec2Error::SubnetConflict(_) => "InvalidSubnet.Conflict",
            Ec2Error::DependencyViolation(_) => "DependencyViolation",
            Ec2Error::AddressInUse(_) => "InvalidIPAddress.InUse",
            Ec2Error::InsufficientFreeAddresses(_) => "InsufficientFreeAddressesInSubnet",
            Ec2Error::GroupNotFound(_) => "InvalidGroup.NotFound",
            Ec2Error::GroupIdMalformed(_) => "InvalidGroupId.Malformed",
            Ec2Error::GroupDuplicate(_) => "InvalidGroup.Duplicate",
            Ec2Error::GroupInUse(_) => "InvalidGroup.InUse",
            Ec2Error::GroupReserved(_) => "InvalidGroup.Reserved",
            Ec2Error::PermissionDuplicate(_) => "InvalidPermission.Duplicate",
            Ec2Error::PermissionNotFound(_) => "InvalidPermission.NotFound",
            Ec2Error::InvalidGroupVpc(_) => "InvalidParameter",
            Ec2Error::AddressNotFound(_) => "InvalidAddress.NotFound",
            Ec2Error::AllocationIdMalformed(_) => "InvalidAllocationID.Malformed",
            Ec2Error::AssociationNotFound(_) => "InvalidAssociationID.NotFound",
            Ec2Error::AssociationIdMalformed(_) => "InvalidAssociationID.Malformed",
            Ec2Error::ResourceAlreadyAssociated(_) => "Resource.AlreadyAssociated",
            Ec2Error::AddressLimitExceeded(_) => "AddressLimitExceeded",
            Ec2Error::Store(_) | Ec2Error::Io { .. } => "InternalError",
        }
    }

    /// The gRPC status class the error maps to.
    pub fn status_class(&self) -> StatusClass {
        match self {
            Ec2Error::InstanceNotFound(_)
            | Ec2Error::ImageNotFound(_)
            | Ec2Error::KeyPairNotFound(_)
            | Ec2Error::VolumeNotFound(_)
            | Ec2Error::AttachmentNotFound(_)
            | Ec2Error::SnapshotNotFound(_)
            | Ec2Error::VpcNotFound(_)
            | Ec2Error::SubnetNotFound(_)
            | Ec2Error::GroupNotFound(_)
            | Ec2Error::PermissionNotFound(_)
            | Ec2Error::AddressNotFound(_)
            | Ec2Error::AssociationNotFound(_) => StatusClass::NotFound,
            Ec2Error::VpcIdMalformed(_)
            | Ec2Error::VpcRange(_)
            | Ec2Error::SubnetIdMalformed(_)
            | Ec2Error::SubnetRange(_)
            | Ec2Error::SubnetConflict(_)
            | Ec2Error::GroupIdMalformed(_)
            | Ec2Error::GroupReserved(_)
            | Ec2Error::InvalidGroupVpc(_)
            | Ec2Error::AllocationIdMalformed(_)
            | Ec2Error::AssociationIdMalformed(_) => StatusClass::InvalidArgument,
            Ec2Error::DependencyViolation(_)
            | Ec2Error::AddressInUse(_)
            | Ec2Error::GroupInUse(_)
            | Ec2Error::ResourceAlreadyAssociated(_) => StatusClass::FailedPrecondition,
            Ec2Error::GroupDuplicate(_) | Ec2Error::PermissionDuplicate(_) => StatusClass::AlreadyExists,
            Ec2Error::InsufficientFreeAddresses(_) | Ec2Error::AddressLimitExceeded(_) => {
                StatusClass::ResourceExhausted
            }
            Ec2Error::InstanceIdMalformed(_)
            | Ec2Error::InvalidParameterValue(_)
            | Ec2Error::InvalidParameterCombination(_)
            | Ec2Error::MissingParameter(_)
            | Ec2Error::ImageIdMalformed(_)
            | Ec2Error::InvalidInstanceType(_)
            | Ec2Error::VolumeIdMalformed(_)
            | Ec2Error::InvalidId(_)
            | Ec2Error::InvalidBlockDeviceMapping(_)
            | Ec2Error::SnapshotIdMalformed(_)
            | Ec2Error::VolumeZoneMismatch(_)
            | Ec2Error::InvalidManifest(_)
            | Ec2Error::TagLimitExceeded(_) => StatusClass::InvalidArgument,
            Ec2Error::VolumeInUse(_)
            | Ec2Error::ResourceIncorrectState(_)
            | Ec2Error::SnapshotInUse(_)
            | Ec2Error::KmsKeyInvalidState(_) => StatusClass::FailedPrecondition,
            Ec2Error::IncorrectInstanceState { .. } | Ec2Error::IncorrectState(_) | Ec2Error::DryRunOperation => {
                StatusClass::FailedPrecondition
            }
            Ec2Error::IdempotentParameterMismatch(_)
            | Ec2Error::ImageNameDuplicate(_)
            | Ec2Error::KeyPairDuplicate(_) => StatusClass::AlreadyExists,
            Ec2Error::OperationNotPermitted(_) => StatusClass::PermissionDenied,
            Ec2Error::InsufficientInstanceCapacity(_) => StatusClass::ResourceExhausted,
            Ec2Error::UnsupportedOperation(_) => StatusClass::Unimplemented,
            Ec2Error::Key(error) if error.is_client_error() => StatusClass::InvalidArgument,
            Ec2Error::Key(_) | Ec2Error::Store(_) | Ec2Error::Io { .. } => StatusClass::Internal,
        }
    }

    /// The message with its whole cause chain, as sent to the caller.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// `Io` with the operation that failed.
    pub fn io(operation: impl Into<String>, source: std::io::Error) -> Ec2Error {
        Ec2Error::Io {
            operation: operation.into(),
            source,
        }
    }
}

/// Short for `Result<T, Ec2Error>`.
pub type Ec2Result<T> = Result<T, Ec2Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code_and_status_class() {
        let io = || std::io::Error::other("disk on fire");
        let cases: Vec<(Ec2Error, &str, StatusClass)> = vec![
            (
                Ec2Error::InstanceNotFound("i-1".into()),
                "InvalidInstanceID.NotFound",
                StatusClass::NotFound,
            ),
            (
                Ec2Error::InstanceIdMalformed("x".into()),
                "InvalidInstanceID.Malformed",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::IncorrectInstanceState {
                    id: "i-1".into(),
                    action: "started",
                },
                "IncorrectInstanceState",
                StatusClass::FailedPrecondition,
            ),
            (
                Ec2Error::OperationNotPermitted("no".into()),
                "OperationNotPermitted",
                StatusClass::PermissionDenied,
            ),
            (
                Ec2Error::InvalidParameterValue("v".into()),
                "InvalidParameterValue",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::InvalidParameterCombination("c".into()),
                "InvalidParameterCombination",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::MissingParameter("ImageId".into()),
                "MissingParameter",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::InsufficientInstanceCapacity("full".into()),
                "InsufficientInstanceCapacity",
                StatusClass::ResourceExhausted,
            ),
            (
                Ec2Error::DryRunOperation,
                "DryRunOperation",
                StatusClass::FailedPrecondition,
            ),
            (
                Ec2Error::IdempotentParameterMismatch("t".into()),
                "IdempotentParameterMismatch",
                StatusClass::AlreadyExists,
            ),
            (
                Ec2Error::ImageNotFound("ami-1".into()),
                "InvalidAMIID.NotFound",
                StatusClass::NotFound,
            ),
            (
                Ec2Error::ImageIdMalformed("ami".into()),
                "InvalidAMIID.Malformed",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::ImageNameDuplicate("n".into()),
                "InvalidAMIName.Duplicate",
                StatusClass::AlreadyExists,
            ),
            (
                Ec2Error::KeyPairNotFound("k".into()),
                "InvalidKeyPair.NotFound",
                StatusClass::NotFound,
            ),
            (
                Ec2Error::KeyPairDuplicate("k".into()),
                "InvalidKeyPair.Duplicate",
                StatusClass::AlreadyExists,
            ),
            (
                Ec2Error::InvalidInstanceType("t".into()),
                "InvalidInstanceType",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::VolumeNotFound("vol-1".into()),
                "InvalidVolume.NotFound",
                StatusClass::NotFound,
            ),
            (
                Ec2Error::VolumeIdMalformed("vol".into()),
                "InvalidVolumeID.Malformed",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::InvalidId("sg-1".into()),
                "InvalidID",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::InvalidBlockDeviceMapping("b".into()),
                "InvalidBlockDeviceMapping",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::UnsupportedOperation("u".into()),
                "UnsupportedOperation",
                StatusClass::Unimplemented,
            ),
            (
                Ec2Error::TagLimitExceeded("t".into()),
                "TagLimitExceeded",
                StatusClass::InvalidArgument,
            ),
            (
                Ec2Error::KmsKeyInvalidState("k".into()),
                "InvalidKMSKey.InvalidState",
                StatusClass::FailedPrecondition,
            ),
            (
                Ec2Error::io("copy a file", io()),
                "InternalError",
                StatusClass::Internal,
            ),
        ];
        for (error, code, class) in cases {
            assert_eq!((error.code(), error.status_class()), (code, class), "{error:?}");
        }
        assert_eq!(Ec2Error::io("copy a file", io()).message(), "copy a file: disk on fire");
    }
}
