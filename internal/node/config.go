package node

// containerdConfig: the CRI plugin with runc (cgroupfs, the kubelet's
// driver), the native snapshotter (the cloud kernel has overlayfs only as a
// module, and the images are tiny) and our pause image.
const containerdConfig = `version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "` + PauseImage + `"

[plugins."io.containerd.cri.v1.runtime"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = "native"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
`

// kubeletConfig: cgroupfs on cgroup v2, no swap check, the kubelet's own
// API closed to everyone (nothing here calls it), eviction and image GC
// thresholds out of the way of a node whose disk is RAM.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
readOnlyPort: 0
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
resolvConf: /etc/resolv.conf
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
maxPods: 20
`

// cniConfig: a veth pair per pod from Debian's ptp plugin, addresses from
// host-local. Pods reach their own loopback and the node, nothing else.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "heapwatch",
  "plugins": [
    {"type": "ptp", "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": "/var/lib/cni/networks"}}
  ]
}
`

// setupScript loads the modules, configures the NIC, makes / a shared
// mount (as systemd does; the kubelet's volumes propagate), starts
// containerd and imports the images once it answers.
const setupScript = `
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net veth; do
  insmod /lib/modules/$m.ko
done
i=0; until ip link show eth0 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || { echo no eth0; exit 1; }; sleep 0.1; done
ip addr add ` + IP + `/24 dev eth0
ip link set eth0 up
mount --make-rshared /
mkdir -p /var/log /var/lib/kubelet /var/lib/containerd /run/containerd /etc/kubernetes/manifests
setsid /usr/bin/containerd --config /etc/containerd/config.toml >/var/log/containerd.log 2>&1 </dev/null &
i=0; until ctr version >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 1200 ] || { echo containerd not ready; tail -n 40 /var/log/containerd.log; exit 1; }; sleep 0.5; done
for f in /var/lib/heapwatch-node/images/*.tar; do
  ctr -n k8s.io images import --local --snapshotter native "$f"
  rm "$f"
done
ctr -n k8s.io images ls -q
`

// kubeletScript starts the kubelet and waits for its healthz.
const kubeletScript = `
setsid /usr/bin/kubelet --config /etc/kubernetes/kubelet.yaml --kubeconfig /etc/kubernetes/kubelet.conf \
  --node-ip ` + IP + ` --v 2 >/var/log/kubelet.log 2>&1 </dev/null &
i=0; until wget -q -O /dev/null http://127.0.0.1:10248/healthz 2>/dev/null; do i=$((i+1)); [ $i -lt 1200 ] || { echo kubelet not healthy; tail -n 60 /var/log/kubelet.log; exit 1; }; sleep 0.5; done
`
