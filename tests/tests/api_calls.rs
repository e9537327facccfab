//! The rest of the Compute API through the CLI against a real region: key pairs, tags,
//! instance types, images (including CreateImage from an instance), regions and zones,
//! attributes, console output and instance status.

use std::time::Duration;

use hearth_e2e::{kvm_available, AgentMode, Cloud};

const T: Duration = Duration::from_secs(30);

#[test]
fn key_pairs_tags_types_images_regions_attributes_console() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);

    // Key pairs: the private key once, then only the public part.
    let created = cloud.cli_json(&["create-key-pair", "--key-name", "demo", "--key-type", "ed25519"]);
    assert!(
        created["KeyMaterial"]
            .as_str()
            .unwrap()
            .contains("BEGIN OPENSSH PRIVATE KEY"),
        "{created}"
    );
    assert!(created["KeyFingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let duplicate = cloud.cli(&["create-key-pair", "--key-name", "demo"]);
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("(InvalidKeyPair.Duplicate)"));
    let listed = cloud.cli_json(&["describe-key-pairs"]);
    assert_eq!(listed["KeyPairs"][0]["KeyName"], "demo");
    assert!(
        listed.to_string().find("PRIVATE KEY").is_none(),
        "private key listed: {listed}"
    );

    // Instance types, regions, zones.
    let types = cloud.cli_json(&["describe-instance-types"]);
    let names: Vec<&str> = types["InstanceTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["InstanceType"].as_str().unwrap())
        .collect();
    for expected in ["t3.nano", "t3.micro", "m5.large", "c5.xlarge", "r5.large", "i3.large"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let regions = cloud.cli_json(&["describe-regions"]);
    assert_eq!(regions["Regions"][0]["RegionName"], "homelab-1");

    // An instance with a key, tags, attributes, console output and status.
    let ami = cloud.register_probe_ami("probe-api", "timer,wait");
    let reservation = cloud.cli_json(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--key-name",
        "demo",
    ]);
    let id = reservation["Instances"][0]["InstanceId"].as_str().unwrap().to_string();
    assert_eq!(reservation["Instances"][0]["KeyName"], "demo");
    cloud.wait_state(&id, "running", T);
    let output = cloud.cli(&[
        "create-tags",
        "--resources",
        &id,
        "--tags",
        "Key=env,Value=test",
        "Key=owner,Value=me",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tags = cloud.cli_json(&["describe-tags", "--filters", &format!("Name=resource-id,Values={id}")]);
    assert_eq!(tags["Tags"].as_array().unwrap().len(), 2, "{tags}");
    let output = cloud.cli(&["delete-tags", "--resources", &id, "--tags", "Key=owner"]);
    assert!(output.status.success());
    let tags = cloud.cli_json(&["describe-tags", "--filters", &format!("Name=resource-id,Values={id}")]);
    assert_eq!(tags["Tags"].as_array().unwrap().len(), 1, "{tags}");

    let behaviour = cloud.cli_json(&[
        "describe-instance-attribute",
        "--instance-id",
        &id,
        "--attribute",
        "instanceInitiatedShutdownBehavior",
    ]);
    assert!(behaviour.to_string().contains("stop"), "{behaviour}");
    // The instance type changes only while stopped.
    let output = cloud.cli(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--instance-type",
        "t3.small",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("(IncorrectInstanceState)"));

    cloud.wait_console(&id, "probe: boot timer written", T);
    let console = cloud.cli(&["get-console-output", "--instance-id", &id, "--output", "text"]);
    assert!(String::from_utf8_lossy(&console.stdout).contains("probe: hearth probe guest v1"));
    let status = cloud.cli_json(&["describe-instance-status", "--instance-ids", &id]);
    assert_eq!(
        status["InstanceStatuses"][0]["InstanceState"]["Name"], "running",
        "{status}"
    );

    // Stop, change the type, CreateImage from the stopped instance, and boot it.
    cloud.cli_json(&["stop-instances", "--instance-ids", &id]);
    cloud.wait_state(&id, "stopped", T);
    let output = cloud.cli(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--instance-type",
        "t3.small",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cloud.instance(&id).instance_type, "t3.small");
    let image = cloud.cli_json(&["create-image", "--instance-id", &id, "--name", "from-instance"]);
    let new_ami = image["ImageId"].as_str().unwrap().to_string();
    let images = cloud.cli_json(&["describe-images", "--image-ids", &new_ami]);
    assert_eq!(images["Images"][0]["Name"], "from-instance", "{images}");
    let child = cloud.cli_json(&["run-instances", "--image-id", &new_ami, "--instance-type", "t3.nano"]);
    let child_id = child["Instances"][0]["InstanceId"].as_str().unwrap().to_string();
    cloud.wait_state(&child_id, "running", T);
    cloud.wait_console(&child_id, "probe: boot timer written", T);

    let output = cloud.cli(&["deregister-image", "--image-id", &new_ami]);
    assert!(output.status.success());
    let output = cloud.cli(&["run-instances", "--image-id", &new_ami, "--instance-type", "t3.nano"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("(InvalidAMIID.NotFound)"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = cloud.cli(&["delete-key-pair", "--key-name", "demo"]);
    assert!(output.status.success());
}
