def test_head(ray_cluster, ray_head, run_search, tmp_path, make_npz):
    from trainables.tasks import get_task
    print(ray_head, ray_head.session_dir)
    assert ray_cluster.cluster_resources()["CPU"] == 2
    data = make_npz(get_task("pneumonia"), n=64)
    proc = run_search("--task", "pneumonia", "--data-dir", str(data.parent), "--smoke-test", "--weights", "none", "--storage", str(tmp_path/"runs"), "--name", "x")
    assert proc.returncode == 0
