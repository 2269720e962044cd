//! `--data-dir`: nothing written before a restart is lost, resourceVersions included.

use control_plane::store::Store;
use serde_json::json;

#[test]
fn restart_serves_the_same_objects_and_versions() {
    let dir = std::env::temp_dir().join(format!("kproxy-cp-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, version) = {
        let mut s = Store::open(100, &dir).unwrap();
        s.create("namespaces", "", json!({"metadata": {"name": "ns"}}))
            .unwrap();
        let a = s
            .create(
                "services",
                "ns",
                json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
            )
            .unwrap();
        s.create("services", "ns", json!({"metadata": {"name": "b"}}))
            .unwrap();
        s.delete("services", "ns", "b").unwrap();
        let mut a2 = a.clone();
        a2["spec"]["x"] = json!(1);
        let a = s.update("services", "ns", "a", a2).unwrap();
        (a, s.version())
    };
    let mut s = Store::open(100, &dir).unwrap();
    assert_eq!(s.get("services", "ns", "a").unwrap(), a);
    assert!(
        s.get("services", "ns", "b").is_err(),
        "the delete was kept too"
    );
    assert_eq!(s.version(), version);
    let c = s
        .create("services", "ns", json!({"metadata": {"name": "c"}}))
        .unwrap();
    assert_eq!(
        c["metadata"]["resourceVersion"],
        json!((version + 1).to_string()),
        "versions go on"
    );
    // A watch from before the restart cannot be resumed: 410, clients re-list.
    assert!(s.events_since(version - 1).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
