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

// What the hooks need of a service port. `count` backends live in slots
// 0..count of the backends map under `id`. Fields after `count` are
// reserved for later parts of issue #15 and written as 0 today:
// `flags` (SVC_F_*), `affinity_timeout` (seconds; with SVC_F_AFFINITY the
// choice is remembered in an LRU map keyed by (client cookie/addr, id)).
struct svc_value {
	__u32 id;
	__u16 count;
	__u16 flags;
	__u32 affinity_timeout;
};

// Reserved flags (not acted on yet).
#define SVC_F_AFFINITY 0x1       // ClientIP affinity
#define SVC_F_LOCAL_ONLY 0x2     // internalTrafficPolicy: Local
#define SVC_F_VIA_AGENT 0x4      // slot 0 is the agent's own listener

struct backend_key {
	__u32 id;
	__u32 slot;
};

// A backend's address and port. `flags` is reserved: BACKEND_F_LOOPBACK
// marks an address only the host's network namespace can reach
// (bpf_get_netns_cookie check, later part of #15).
struct backend_value {
	__u32 addr[4];
	__u16 port;  // network order
	__u8 flags;
	__u8 pad;
};

#define BACKEND_F_LOOPBACK 0x1

// Reverse translation: for a socket (its cookie) that was sent to a
// backend, the service address it asked for. recvmsg and getpeername put
// it back so the application sees the service address.
struct rev_key {
	__u64 cookie;
	__u32 addr[4];  // backend
	__u16 port;     // backend, network order
	__u16 pad;
	__u32 pad2;
};

struct rev_value {
	__u32 addr[4];  // service
	__u16 port;     // service, network order
	__u16 pad;
};

// Reserved for ClientIP affinity (later part of #15): key and value of
// the LRU map, not created yet.
//   struct affinity_key { __u64 client_cookie_or_addr; __u32 id; __u32 pad; };
//   struct affinity_value { __u64 last_used_ns; __u32 slot; __u32 pad; };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} em_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} em_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct rev_key);
	__type(value, struct rev_value);
} em_rev SEC(".maps");

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

// Picks a backend for (addr, port) of ctx's protocol; NULL if the address
// is no service's or the service has no backend (left as it is).
static __always_inline struct backend_value *pick(struct svc_key *key)
{
	struct svc_value *svc = bpf_map_lookup_elem(&em_services, key);
	if (!svc || svc->count == 0)
		return NULL;
	struct backend_key bk = {
		.id = svc->id,
		.slot = bpf_get_prandom_u32() % svc->count,
	};
	return bpf_map_lookup_elem(&em_backends, &bk);
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const struct svc_key *svc,
				     const struct backend_value *be)
{
	struct rev_key rk = {};
	struct rev_value rv = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	rk.port = be->port;
	__builtin_memcpy(rv.addr, svc->addr, sizeof(rv.addr));
	rv.port = svc->port;
	bpf_map_update_elem(&em_rev, &rk, &rv, BPF_ANY);
}

static __always_inline int translate4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	v4_mapped(key.addr, ctx->user_ip4);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	struct backend_value *be = pick(&key);
	// An IPv4 socket can only reach an IPv4 backend.
	if (!be || !is_v4_mapped(be->addr))
		return 1;
	remember(ctx, &key, be);
	ctx->user_ip4 = be->addr[3];
	ctx->user_port = be->port;
	return 1;
}

static __always_inline int translate6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	struct backend_value *be = pick(&key);
	if (!be)
		return 1;
	// A v4-mapped service keeps v4-mapped backends; a v6 one, v6 ones.
	if (is_v4_mapped(key.addr) != is_v4_mapped(be->addr))
		return 1;
	remember(ctx, &key, be);
	ctx->user_ip6[0] = be->addr[0];
	ctx->user_ip6[1] = be->addr[1];
	ctx->user_ip6[2] = be->addr[2];
	ctx->user_ip6[3] = be->addr[3];
	ctx->user_port = be->port;
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
	rk.addr[0] = ctx->user_ip6[0];
	rk.addr[1] = ctx->user_ip6[1];
	rk.addr[2] = ctx->user_ip6[2];
	rk.addr[3] = ctx->user_ip6[3];
	rk.port = (__u16)ctx->user_port;
	struct rev_value *rv = bpf_map_lookup_elem(&em_rev, &rk);
	if (rv) {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
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
