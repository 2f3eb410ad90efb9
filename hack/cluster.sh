#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for `make e2e`:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy v1.34.4 from .testbin/ (hack/testbin.sh node), a private
# containerd (CRI plugin, runc) and CNI bridge networking, and an OCI
# registry on loopback (hack/ociimage registry, at $LASTCALL_REGISTRY,
# 127.0.0.1:25213) that containerd pulls ghcr.io's images from: `make push
# REGISTRY=127.0.0.1:25213` puts lastcall's images and chart there. Run as
# root.
#
#   hack/cluster.sh up [IMAGE.tar...]  start it, import the images, wait for Ready
#   hack/cluster.sh down               stop everything it started, by PID, and
#                                      remove its containers, mounts, bridge,
#                                      iptables rules and state; put back the
#                                      kernel settings the kubelet changed
#
# It keeps to itself: its own containerd root, state and socket, runc root,
# bridge (lastcall0) and subnets (pods 10.213.0.0/24, Services
# 10.213.128.0/24), every server bound to loopback or to the bridge's address
# (10.213.0.1, also the node's IP), and only the iptables chains it or its
# kube-proxy made. State lives in $LASTCALL_CLUSTER_DIR (/var/lib/lastcall-e2e);
# the admin kubeconfig is $LASTCALL_CLUSTER_DIR/admin.kubeconfig.
set -Eeuo pipefail

cd "$(dirname "$0")/.."
bin=$PWD/.testbin
ociimage=$PWD/.tools/ociimage
registry=${LASTCALL_REGISTRY:-127.0.0.1:25213}
dir=${LASTCALL_CLUSTER_DIR:-/var/lib/lastcall-e2e}
node=lastcall-e2e
bridge=lastcall0
node_ip=10.213.0.1
pod_cidr=10.213.0.0/24
svc_cidr=10.213.128.0/24
svc_ip=10.213.128.1
sock=$dir/run/containerd.sock
etcd_port=23790
api=https://$node_ip:6443
fixed_paths=(/var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /usr/libexec/kubernetes)
# Kernel settings the kubelet (its kernel defaults), the CNI bridge plugin
# (forwarding) and this script change: down puts back what up found.
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom
	kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { echo "cluster: $*" >&2; }

# start NAME CMD... runs CMD in the background with its output in
# $dir/log/NAME.log and its PID in $dir/pid/NAME.
start() {
	local name=$1; shift
	"$@" >"$dir/log/$name.log" 2>&1 &
	echo $! >"$dir/pid/$name"
}

# wait_for WHAT SECONDS CMD... retries CMD every 0.2 s.
wait_for() {
	local what=$1 secs=$2 i; shift 2
	for ((i = 0; i < secs * 5; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	log "$what not ready after ${secs}s; logs in $dir/log"
	return 1
}

pki() {
	local p=$dir/pki
	mkdir -p "$p"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lastcall-e2e-ca \
		-keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	# cert NAME SUBJECT [SANS]
	cert() {
		local ext=$p/$1.ext
		printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
		[[ -n ${3:-} ]] && echo "subjectAltName=$3" >>"$ext"
		openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
		openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
			-days 2 -extfile "$ext" -out "$p/$1.crt" 2>/dev/null
	}
	cert apiserver /CN=kube-apiserver "IP:$node_ip,IP:$svc_ip,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=admin"
	cert kubelet "/O=system:nodes/CN=system:node:$node" "IP:$node_ip,DNS:$node"
	cert kcm /CN=system:kube-controller-manager
	cert scheduler /CN=system:kube-scheduler
	cert proxy /CN=system:kube-proxy
	local n
	for n in admin kubelet kcm scheduler proxy; do
		cat >"$dir/$n.kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters: [{name: e2e, cluster: {server: "$api", certificate-authority: "$p/ca.crt"}}]
		users: [{name: $n, user: {client-certificate: "$p/$n.crt", client-key: "$p/$n.key"}}]
		contexts: [{name: e2e, context: {cluster: e2e, user: $n}}]
		current-context: e2e
		EOF
	done
}

containerd_config() {
	mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
	cat >"$dir/containerd.toml" <<-EOF
	version = 2
	# The opt plugin would create /opt/containerd; the others only log.
	disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
	  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
	root = "$dir/containerd/root"
	state = "$dir/containerd/state"
	[grpc]
	  address = "$sock"
	[plugins."io.containerd.grpc.v1.cri"]
	  sandbox_image = "registry.k8s.io/pause:3.10"
	  # Without CAP_SYS_RESOURCE runc cannot set a negative oom_score_adj.
	  restrict_oom_score_adj = true
	  netns_mounts_under_state_dir = true
	  [plugins."io.containerd.grpc.v1.cri".registry]
	    # ghcr.io's images come from the registry on loopback.
	    config_path = "$dir/certs.d"
	  [plugins."io.containerd.grpc.v1.cri".cni]
	    bin_dir = "/usr/lib/cni"
	    conf_dir = "$dir/cni/net.d"
	  [plugins."io.containerd.grpc.v1.cri".containerd]
	    snapshotter = "overlayfs"
	    default_runtime_name = "runc"
	    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
	      runtime_type = "io.containerd.runc.v2"
	      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
	        Root = "$dir/runc"
	        SystemdCgroup = false
	EOF
	# The registry speaks plain HTTP on loopback; containerd (on the host's
	# network) pulls from it as a mirror of ghcr.io, so the chart's default
	# images resolve there; ghcr.io itself is never reached.
	mkdir -p "$dir/certs.d/ghcr.io" "$dir/certs.d/$registry"
	cat >"$dir/certs.d/ghcr.io/hosts.toml" <<-EOF
	server = "https://ghcr.io"
	[host."http://$registry"]
	  capabilities = ["pull", "resolve"]
	EOF
	cat >"$dir/certs.d/$registry/hosts.toml" <<-EOF
	server = "http://$registry"
	EOF
	cat >"$dir/cni/net.d/10-lastcall-e2e.conflist" <<-EOF
	{
	  "cniVersion": "0.4.0",
	  "name": "lastcall-e2e",
	  "plugins": [
	    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
	     "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
	              "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "10.213.0.10", "gateway": "$node_ip"}]],
	              "routes": [{"dst": "0.0.0.0/0"}]}}
	  ]
	}
	EOF
}

kubelet_config() {
	# Who evicted, deleted or changed what (the e2e tells lastcall's
	# actions from another tool's by user): those requests only.
	cat >"$dir/audit-policy.yaml" <<-EOF
	apiVersion: audit.k8s.io/v1
	kind: Policy
	omitStages: ["RequestReceived"]
	rules:
	- level: Metadata
	  verbs: ["create", "update", "patch", "delete"]
	  resources:
	  - group: ""
	    resources: ["pods/eviction", "pods", "nodes"]
	- level: None
	EOF
	cat >"$dir/kubelet.yaml" <<-EOF
	apiVersion: kubelet.config.k8s.io/v1beta1
	kind: KubeletConfiguration
	address: $node_ip
	healthzBindAddress: 127.0.0.1
	authentication:
	  anonymous: {enabled: false}
	  webhook: {enabled: true}
	  x509: {clientCAFile: "$dir/pki/ca.crt"}
	authorization: {mode: Webhook}
	tlsCertFile: "$dir/pki/kubelet.crt"
	tlsPrivateKeyFile: "$dir/pki/kubelet.key"
	containerRuntimeEndpoint: "unix://$sock"
	# containerd 1.6 has no RuntimeConfig call to report its driver.
	cgroupDriver: cgroupfs
	failCgroupV1: false
	failSwapOn: false
	podLogsDir: "$dir/pod-logs"
	volumePluginDir: "$dir/volume-plugins"
	clusterDomain: cluster.local
	resolvConf: /etc/resolv.conf
	serializeImagePulls: false
	imageGCHighThresholdPercent: 100
	evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
	shutdownGracePeriod: 0s
	EOF
}

up() {
	if [[ -e $dir ]]; then
		log "$dir exists: already up, or not cleaned up; run hack/cluster.sh down first"
		exit 1
	fi
	local b
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
		[[ -x $bin/$b ]] || { log "$bin/$b missing: run hack/testbin.sh node"; exit 1; }
	done
	for b in containerd ctr runc iptables conntrack openssl ip; do
		command -v "$b" >/dev/null || { log "$b missing: apt-get install containerd runc containernetworking-plugins iptables conntrack openssl iproute2"; exit 1; }
	done
	[[ -x /usr/lib/cni/bridge ]] || { log "/usr/lib/cni/bridge missing: apt-get install containernetworking-plugins"; exit 1; }
	[[ -x $ociimage ]] || { log "$ociimage missing: make .tools/ociimage"; exit 1; }
	local t0=$SECONDS
	mkdir -p "$dir"/{pid,log,run,etcd,kubelet,pod-logs}
	# A failed start leaves nothing behind.
	trap 'log "start failed; logs were in $dir/log:"; tail -n 5 "$dir"/log/*.log >&2 || true; down' ERR
	# Fixed paths the kubelet, containerd's shims and CNI use whatever
	# their configuration: those missing now are removed by down.
	local path
	for path in "${fixed_paths[@]}"; do
		[[ -e $path ]] || echo "$path" >>"$dir/made-paths"
	done
	for path in "${sysctls[@]}"; do
		echo "$path=$(sysctl -n "$path" 2>/dev/null)" >>"$dir/sysctls"
	done
	pki
	containerd_config
	kubelet_config

	# The bridge is made here, so that the servers can bind its address
	# before the first pod; the CNI bridge plugin then uses it as it is.
	ip link add "$bridge" type bridge
	ip addr add "$node_ip/24" dev "$bridge"
	ip link set "$bridge" up
	# Pod traffic to Service IPs of pods on the same bridge goes through
	# iptables (kube-proxy).
	modprobe br_netfilter 2>/dev/null || true
	sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

	start registry "$ociimage" registry -addr "$registry" -dir "$dir/registry"
	start containerd containerd --config "$dir/containerd.toml"
	start etcd "$bin/etcd" --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
		--advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls http://127.0.0.1:23800 \
		--initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
		--unsafe-no-fsync
	wait_for containerd 20 ctr -a "$sock" version
	wait_for etcd 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$etcd_port"
	wait_for registry 20 curl -sf "http://$registry/v2/"

	local p=$dir/pki
	start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address "$node_ip" --advertise-address "$node_ip" --secure-port 6443 \
		--service-cluster-ip-range "$svc_cidr" --client-ca-file "$p/ca.crt" \
		--tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
		--kubelet-client-certificate "$p/admin.crt" --kubelet-client-key "$p/admin.key" \
		--kubelet-certificate-authority "$p/ca.crt" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged --profiling=false \
		--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/log/audit.log"
	wait_for kube-apiserver 60 kget /readyz
	start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/kcm.kubeconfig" \
		--authentication-kubeconfig "$dir/kcm.kubeconfig" --authorization-kubeconfig "$dir/kcm.kubeconfig" \
		--service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
		--use-service-account-credentials --leader-elect=false --bind-address 127.0.0.1 --secure-port 10557 \
		--service-cluster-ip-range "$svc_cidr" --flex-volume-plugin-dir "$dir/volume-plugins" --profiling=false
	start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
		--authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
		--leader-elect=false --bind-address 127.0.0.1 --secure-port 10559 --profiling=false
	start kubelet "$bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
		--root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" --hostname-override "$node" \
		--node-ip "$node_ip" --node-labels lastcall.dev/preemptible=true -v=3
	start kube-proxy "$bin/kube-proxy" --kubeconfig "$dir/proxy.kubeconfig" --hostname-override "$node" \
		--proxy-mode iptables --cluster-cidr "$pod_cidr" --bind-address "$node_ip" \
		--metrics-bind-address 127.0.0.1:10549 --healthz-bind-address 127.0.0.1:10546 \
		--conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
		--iptables-localhost-nodeports=false --nodeport-addresses "$node_ip/32" \
		--profiling=false

	local img
	for img in "$@"; do
		ctr -a "$sock" -n k8s.io images import --no-unpack=false "$img" >/dev/null
	done
	wait_for "node $node" 90 node_ready
	trap - ERR
	log "up in $((SECONDS - t0))s; KUBECONFIG=$dir/admin.kubeconfig"
}

# kget PATH GETs PATH from the apiserver as the admin.
kget() {
	curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$api$1"
}

node_ready() {
	kget "/api/v1/nodes/$node" | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

# stop NAME kills a process this script started, by its PID, and waits.
stop() {
	local f=$dir/pid/$1 pid i
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	if kill "$pid" 2>/dev/null; then
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

down() {
	[[ -d $dir ]] || return 0
	local name c
	stop kube-proxy
	stop kubelet
	stop kube-scheduler
	stop kube-controller-manager
	# The kubelet leaves its containers running: stop them through the
	# private containerd (its shims belong to this cluster only).
	if [[ -S $sock ]]; then
		for c in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
			ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
		done
		sleep 0.5
		for c in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
			ctr -a "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
		done
	fi
	stop containerd
	stop registry
	stop kube-apiserver
	stop etcd
	# Shims that outlived containerd: only those serving this cluster's
	# containerd (their command line names its socket).
	for c in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
		kill -KILL "$c" 2>/dev/null || true
	done
	# Mounts under the state directory (volumes, overlay roots, netns, shm),
	# deepest first.
	awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	ip link del "$bridge" 2>/dev/null || true
	cleanup_iptables
	# The kubelet's cgroups (cgroupfs driver): empty once the pods are gone.
	find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
	# In fixed paths that were there before up: only this cluster's entries.
	find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
	rm -f /var/lib/kubelet/device-plugins/kubelet.sock
	local r
	for r in /var/lib/cni/results/lastcall-e2e-*; do
		[[ -e $r ]] || continue
		c=${r#/var/lib/cni/results/lastcall-e2e-}
		rm -f "$r" "/var/lib/cni/results/cni-loopback-${c%-eth0}-lo"
	done
	if [[ -f $dir/made-paths ]]; then
		while read -r r; do rm -rf "$r"; done <"$dir/made-paths"
	fi
	if [[ -f $dir/sysctls ]]; then
		while read -r r; do [[ $r == *= ]] || sysctl -qw "$r" 2>/dev/null || true; done <"$dir/sysctls"
	fi
	rm -rf "$dir"
	log "down"
}

# cleanup_iptables removes the CNI masquerade rules of this cluster's
# network (their comments name it), and the KUBE-* chains of its kubelet and
# kube-proxy (another kube-proxy in this network namespace would share them).
cleanup_iptables() {
	local ipt chain table
	for chain in $(iptables -t nat -S POSTROUTING 2>/dev/null | awk '/lastcall-e2e/ {for (i = 1; i <= NF; i++) if ($i == "-j") print $(i+1)}'); do
		drop_chain iptables nat "$chain"
	done
	if [[ -x $bin/kube-proxy ]]; then
		"$bin/kube-proxy" --cleanup --proxy-mode iptables >/dev/null 2>&1 || true
	fi
	for ipt in iptables ip6tables; do
		for table in filter nat mangle; do
			for chain in $($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
				drop_chain "$ipt" "$table" "$chain"
			done
		done
	done
}

# drop_chain IPTABLES TABLE CHAIN deletes the rules that jump to CHAIN, then
# CHAIN itself.
drop_chain() {
	local ipt=$1 table=$2 chain=$3 rule
	{ $ipt -t "$table" -S 2>/dev/null | grep -- "-j $chain\( \|$\)" | grep '^-A' | sed 's/^-A/-D/' || true; } | while read -r rule; do
		eval "$ipt -t $table $rule" 2>/dev/null || true
	done
	$ipt -t "$table" -F "$chain" 2>/dev/null || true
	$ipt -t "$table" -X "$chain" 2>/dev/null || true
}

case ${1:-} in
up) shift; up "$@" ;;
down) down ;;
*) echo "usage: $0 up [IMAGE.tar...] | down" >&2; exit 2 ;;
esac
