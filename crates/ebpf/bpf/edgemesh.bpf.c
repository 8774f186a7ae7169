// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// edgemesh's kernel fast path: cgroup v2 socket-address hooks that turn a
// connection to a service address into a direct connection to one of its
// backends, so no proxy sits in the data path.
//
// Every address in the maps is 16 bytes: IPv6 as is, IPv4 v4-mapped
// (::ffff:a.b.c.d). So an IPv4 socket (connect4) and a v4-mapped IPv6
// socket (connect6 with ::ffff:10.96.0.10) find the same service entry.
// Ports are kept in network byte order, as the hooks see them.
//
// The layouts below are shared with src/abi.rs: change both together.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual Apache-2.0/GPL";

// (address, port, protocol) of a service port.
struct svc_key {
	__u32 addr[4];
	__u16 port;  // network order
	__u8 proto;  // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad;
};

// What the hooks need of a service port. A client in the host's network
// namespace picks among the `count` backends in slots 0..count of list
// `id` (every backend); a client in another namespace among the
// `netns_count` backends of list `netns_id` (those it can reach: no
// loopback address). When its list is empty, a client goes to the agent's
// own listener (`agent_addr`, `agent_port`) if SVC_F_AGENT is set, and is
// left alone otherwise.
struct svc_value {
	__u32 id;
	__u16 count;
	__u16 flags;       // SVC_F_*
	__u32 netns_id;
	__u16 netns_count;
	__u16 pad;
	__u32 affinity_timeout;  // seconds, with SVC_F_AFFINITY
	__u32 rr;                // round robin counter, advanced atomically
	__u32 agent_addr[4];
	__u16 agent_port;        // network order
	__u16 pad2;
};

#define SVC_F_AFFINITY 0x1     // ClientIP affinity (em_affinity)
#define SVC_F_ROUND_ROBIN 0x2  // in turn; otherwise at random
#define SVC_F_AGENT 0x4        // agent_addr/agent_port are set

struct backend_key {
	__u32 id;
	__u32 slot;
};

// A backend's address and port; `flags` is reserved (0).
struct backend_value {
	__u32 addr[4];
	__u16 port;  // network order
	__u8 flags;
	__u8 pad;
};

// Reverse translation: for a socket (its cookie) that was sent to a
// backend or to the agent, the service address it asked for. recvmsg and
// getpeername put it back so the application sees the service address.
struct rev_key {
	__u64 cookie;
	__u32 addr[4];  // backend or agent
	__u16 port;     // network order
	__u16 pad;
	__u32 pad2;
};

struct rev_value {
	__u32 addr[4];  // service
	__u16 port;     // service, network order
	__u16 pad;
};

// ClientIP affinity. The client is its network namespace: in a connect
// hook the source address is not chosen yet, so (as Cilium's socket LB)
// the namespace cookie stands for the client; every socket of one pod, or
// of the host, shares one affinity. `svc_id` is the service's `id`.
struct affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

// The pick (slot and the backend it held, checked again on use so a
// changed slot is never followed) and when it was last used.
struct affinity_value {
	__u64 last_used_ns;  // bpf_ktime_get_ns
	__u32 slot;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

// Set by the loader: the network namespace whose clients may get
// loopback backends (the agent's, the host's), and a hash of the object
// the programs came from (read only by the loader: pinned programs of
// another build are replaced, not adopted).
struct config {
	__u64 host_netns_cookie;
	__u64 object_hash;
};

// Sizes: an edge node has little memory. The service and backend maps
// allocate per entry (BPF_F_NO_PREALLOC: only what the agent writes, and
// a replaced entry is freed after every reader is done with it); the LRU
// maps are preallocated by the kernel, so they are kept small (about 8
// and 2 MiB).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} em_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} em_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rev_key);
	__type(value, struct rev_value);
} em_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} em_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} em_config SEC(".maps");

#define V4_MAPPED_PREFIX bpf_htonl(0x0000ffff)

static __always_inline void v4_mapped(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = V4_MAPPED_PREFIX;
	out[3] = ip4;
}

static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_PREFIX;
}

// Where a connection goes: a backend's or the agent's address and port.
struct target {
	__u32 addr[4];
	__u16 port;
};

static __always_inline void copy_addr(__u32 out[4], const __u32 in[4])
{
	out[0] = in[0];
	out[1] = in[1];
	out[2] = in[2];
	out[3] = in[3];
}

static __always_inline int same_backend(const struct backend_value *be, const struct affinity_value *av)
{
	return be->port == av->port && be->addr[0] == av->addr[0] && be->addr[1] == av->addr[1] &&
	       be->addr[2] == av->addr[2] && be->addr[3] == av->addr[3];
}

// Picks where a connection to `key` goes, for a client in the network
// namespace of ctx. 0: no service there, or nothing to pick and no agent
// (leave the connection as it is).
static __always_inline int choose(struct bpf_sock_addr *ctx, const struct svc_key *key, struct target *out)
{
	struct svc_value *svc = bpf_map_lookup_elem(&em_services, key);
	if (!svc)
		return 0;
	__u64 netns = bpf_get_netns_cookie(ctx);
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&em_config, &zero);
	int host = cfg && cfg->host_netns_cookie != 0 && cfg->host_netns_cookie == netns;
	__u32 id = host ? svc->id : svc->netns_id;
	__u32 count = host ? svc->count : svc->netns_count;
	if (count == 0) {
		if (!(svc->flags & SVC_F_AGENT))
			return 0;
		copy_addr(out->addr, svc->agent_addr);
		out->port = svc->agent_port;
		return 1;
	}

	struct affinity_key ak = { .netns_cookie = netns, .svc_id = svc->id };
	__u64 now = 0;
	struct backend_key bk = { .id = id };
	struct backend_value *be;
	if (svc->flags & SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		struct affinity_value *av = bpf_map_lookup_elem(&em_affinity, &ak);
		if (av && now - av->last_used_ns <= (__u64)svc->affinity_timeout * 1000000000ULL &&
		    av->slot < count) {
			bk.slot = av->slot;
			be = bpf_map_lookup_elem(&em_backends, &bk);
			if (be && same_backend(be, av)) {
				av->last_used_ns = now;
				copy_addr(out->addr, be->addr);
				out->port = be->port;
				return 1;
			}
		}
	}

	if (svc->flags & SVC_F_ROUND_ROBIN)
		bk.slot = __sync_fetch_and_add(&svc->rr, 1) % count;
	else
		bk.slot = bpf_get_prandom_u32() % count;
	be = bpf_map_lookup_elem(&em_backends, &bk);
	if (!be)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity_value av = { .last_used_ns = now, .slot = bk.slot, .port = be->port };
		copy_addr(av.addr, be->addr);
		bpf_map_update_elem(&em_affinity, &ak, &av, BPF_ANY);
	}
	copy_addr(out->addr, be->addr);
	out->port = be->port;
	return 1;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const struct svc_key *svc,
				     const struct target *to)
{
	struct rev_key rk = {};
	struct rev_value rv = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	copy_addr(rk.addr, to->addr);
	rk.port = to->port;
	copy_addr(rv.addr, svc->addr);
	rv.port = svc->port;
	// An unconnected UDP socket sends many datagrams to one target: a
	// lookup is cheaper than an LRU update that changes nothing.
	struct rev_value *known = bpf_map_lookup_elem(&em_rev, &rk);
	if (known && known->port == rv.port && known->addr[0] == rv.addr[0] && known->addr[1] == rv.addr[1] &&
	    known->addr[2] == rv.addr[2] && known->addr[3] == rv.addr[3])
		return;
	bpf_map_update_elem(&em_rev, &rk, &rv, BPF_ANY);
}

static __always_inline int translate4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct target to = {};
	v4_mapped(key.addr, ctx->user_ip4);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	// An IPv4 socket can only reach an IPv4 address.
	if (!choose(ctx, &key, &to) || !is_v4_mapped(to.addr))
		return 1;
	remember(ctx, &key, &to);
	ctx->user_ip4 = to.addr[3];
	ctx->user_port = to.port;
	return 1;
}

static __always_inline int translate6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct target to = {};
	copy_addr(key.addr, ctx->user_ip6);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	if (!choose(ctx, &key, &to))
		return 1;
	// A v4-mapped service goes to v4-mapped addresses; a v6 one, to v6 ones.
	if (is_v4_mapped(key.addr) != is_v4_mapped(to.addr))
		return 1;
	remember(ctx, &key, &to);
	copy_addr(ctx->user_ip6, to.addr);
	ctx->user_port = to.port;
	return 1;
}

static __always_inline int restore4(struct bpf_sock_addr *ctx)
{
	struct rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	v4_mapped(rk.addr, ctx->user_ip4);
	rk.port = (__u16)ctx->user_port;
	struct rev_value *rv = bpf_map_lookup_elem(&em_rev, &rk);
	if (rv) {
		ctx->user_ip4 = rv->addr[3];
		ctx->user_port = rv->port;
	}
	return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx)
{
	struct rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	copy_addr(rk.addr, ctx->user_ip6);
	rk.port = (__u16)ctx->user_port;
	struct rev_value *rv = bpf_map_lookup_elem(&em_rev, &rk);
	if (rv) {
		copy_addr(ctx->user_ip6, rv->addr);
		ctx->user_port = rv->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int em_connect4(struct bpf_sock_addr *ctx) { return translate4(ctx); }

SEC("cgroup/connect6")
int em_connect6(struct bpf_sock_addr *ctx) { return translate6(ctx); }

SEC("cgroup/sendmsg4")
int em_sendmsg4(struct bpf_sock_addr *ctx) { return translate4(ctx); }

SEC("cgroup/sendmsg6")
int em_sendmsg6(struct bpf_sock_addr *ctx) { return translate6(ctx); }

SEC("cgroup/recvmsg4")
int em_recvmsg4(struct bpf_sock_addr *ctx) { return restore4(ctx); }

SEC("cgroup/recvmsg6")
int em_recvmsg6(struct bpf_sock_addr *ctx) { return restore6(ctx); }

SEC("cgroup/getpeername4")
int em_getpeername4(struct bpf_sock_addr *ctx) { return restore4(ctx); }

SEC("cgroup/getpeername6")
int em_getpeername6(struct bpf_sock_addr *ctx) { return restore6(ctx); }
