// SPDX-License-Identifier: GPL-2.0
/*
 * i2nsf-sdn SFC fast path: a tc clsact ingress program (SCHED_CLS, direct action).
 *
 * Roles, chosen per packet:
 *   - SFF: IPv4 / GRE (no flags, proto 0x894F) / NSH MD type 1 addressed to the local
 *     locator; (SPI, SI) looked up in a hash map; "forward" rewrites the outer header
 *     towards the next hop's locator and decrements the NSH TTL, "terminate" strips
 *     outer IPv4 + GRE + NSH and routes the inner IPv4 packet.
 *   - Classifier: any other IPv4 packet; first rule (by order) whose src/dst prefixes
 *     (two LPM tries holding bitmaps of the rules containing each prefix), protocol,
 *     ports, DSCP and ingress interface match gets outer IPv4 + GRE + NSH MD1 pushed
 *     and goes to the rule's first hop.
 * Everything else (misses, MD type 2, O bit, NSH TTL <= 1, unknown next protocol,
 * IPv4 options, fragments, GSO packets, FIB lookups that do not give a forwarding
 * next hop) returns TC_ACT_OK *before any byte is changed*: the kernel stack hands it
 * to the userspace data path unchanged.
 *
 * Tables come in two slots; the userspace writer fills the inactive slot, then flips
 * fp_gen. fp_slot[slot].gen works as a sequence lock: the writer zeroes it before it
 * touches a slot, so a packet that read a slot whose generation changed under it
 * (re-checked after all lookups, from copies) is passed up instead of forwarded.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RULES 256
#define RULE_WORDS (MAX_RULES / 64)
#define MAX_SFF 8192
#define MAX_COUNTERS 32768
#define GRE_PROTO_NSH 0x894F
#define NSH_MD1_LEN 6          /* NSH length field, 4-byte words */
#define NSH_NP_IPV4 1
#define OUTER_TTL 64
#define ENCAP_LEN (20 + 4 + 24)
#define ETH_LEN 14
#define AF_INET_ 2
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff
#define IP_DF 0x4000

#define KIND_FORWARD 1
#define KIND_TERMINATE 2

enum stat {
	ST_CLS_HIT, ST_SFF_FORWARD, ST_SFF_TERMINATE,
	ST_PASS_NO_TABLE, ST_PASS_NOT_IPV4, ST_PASS_FRAGMENT, ST_PASS_IP_OPTIONS,
	ST_PASS_MALFORMED, ST_PASS_GSO, ST_PASS_CLS_MISS, ST_PASS_SFF_MISS,
	ST_PASS_GRE_FLAGS, ST_PASS_NOT_NSH, ST_PASS_NSH_VERSION, ST_PASS_O_BIT,
	ST_PASS_MD_TYPE, ST_PASS_TTL, ST_PASS_NEXT_PROTO, ST_PASS_FIB,
	ST_PASS_TABLE_CHANGED, ST_ERROR, ST_PASS_NOT_CLASSIFIER_IF, ST_PASS_LOCAL,
	ST_MAX
};

struct slot_cfg {
	__u32 gen;	/* generation held by this slot, 0 while it is being written */
	__u32 local;	/* local locator (network order), 0 = no forwarder */
};

struct lpm_key {
	__u32 prefixlen;	/* 32 (slot word) + prefix length */
	__u32 slot;		/* network order */
	__u32 addr;		/* network order */
};

struct rule_bits {
	__u64 w[RULE_WORDS];
};

struct rule {
	__u32 ifindex;		/* 0 = any */
	__u32 counter;
	__u32 sp;		/* SPI << 8 | SI, network order */
	__u32 first_hop;	/* network order */
	__u16 sport_lo, sport_hi, dport_lo, dport_hi;
	__u8 proto;		/* 0 = any */
	__u8 dscp;		/* 0xff = any */
	__u8 ports;		/* 1 = port ranges must be checked (ports are 0 without L4 ports) */
	__u8 valid;
	__u8 ttl;		/* initial NSH TTL */
	__u8 pad[3];
};

struct if_key {
	__u32 slot;
	__u32 ifindex;
};

struct addr_key {
	__u32 slot;
	__u32 addr;		/* network order */
};

struct sff_key {
	__u32 slot;
	__u32 sp;		/* network order */
};

#define MAX_HOPS 8

struct sff_val {
	__u32 kind;
	__u32 nhops;		/* KIND_FORWARD: 1..MAX_HOPS next hops of equal weight */
	__u32 counter;
	__u32 pad;
	__u32 hop[MAX_HOPS];	/* locators, network order */
	__u32 hop_counter[MAX_HOPS];
	__u64 salt[MAX_HOPS];	/* the userspace path's per-hop salt */
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fp_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct slot_cfg);
} fp_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 2 * 2 * MAX_RULES + 2);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct rule_bits);
} fp_cls_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 2 * 2 * MAX_RULES + 2);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct rule_bits);
} fp_cls_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} fp_cls_rules SEC(".maps");

/* interfaces the classifier works on (those the userspace classifier listens on) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * 256);
	__type(key, struct if_key);
	__type(value, __u32);
} fp_cls_ifs SEC(".maps");

/* addresses of this node: packets to them are not classified (the kernel delivers them) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * 1024);
	__type(key, struct addr_key);
	__type(value, __u32);
} fp_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_SFF);
	__type(key, struct sff_key);
	__type(value, struct sff_val);
} fp_sff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, __u32);
	__type(value, struct counter);
} fp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fp_stats SEC(".maps");

static __always_inline int pass(__u32 why)
{
	__u64 *v = bpf_map_lookup_elem(&fp_stats, &why);

	if (v)
		*v += 1;
	return TC_ACT_OK;
}

/* After the packet was changed it cannot go up unchanged any more: drop and count. */
static __always_inline int drop_err(void)
{
	pass(ST_ERROR);
	return TC_ACT_SHOT;
}

static __always_inline void count(__u32 idx, __u64 len)
{
	struct counter *c = bpf_map_lookup_elem(&fp_counters, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

static __always_inline bool slot_still(__u32 slot, __u32 gen)
{
	struct slot_cfg *sc = bpf_map_lookup_elem(&fp_slot, &slot);

	return sc && sc->gen == gen;
}

static __always_inline __u32 bit_index(__u64 b)
{
	__u32 n = 0;

	if (b & 0xFFFFFFFF00000000ULL) n += 32;
	if (b & 0xFFFF0000FFFF0000ULL) n += 16;
	if (b & 0xFF00FF00FF00FF00ULL) n += 8;
	if (b & 0xF0F0F0F0F0F0F0F0ULL) n += 4;
	if (b & 0xCCCCCCCCCCCCCCCCULL) n += 2;
	if (b & 0xAAAAAAAAAAAAAAAAULL) n += 1;
	return n;
}

struct outer {
	struct iphdr ip;
	__be16 gre_flags;
	__be16 gre_proto;
	__u8 nsh[24];
};

/* The outer header both roles emit, as the userspace path's raw GRE socket gets it from
 * the kernel (IP_PMTUDISC_DONT): no options, TOS 0, DF clear, a fresh ID, TTL 64. */
static __always_inline void build_ip(struct iphdr *ip, __u16 tot_len, __be32 src, __be32 dst)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = (__u16)bpf_get_prandom_u32();
	ip->frag_off = 0;
	ip->ttl = OUTER_TTL;
	ip->protocol = IPPROTO_GRE;
	ip->check = 0;
	ip->saddr = src;
	ip->daddr = dst;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum & 0xffff;
}

/* FIB lookup towards dst as for a packet this host sends (input interface = loopback,
 * which is what the kernel's output route lookup uses; the userspace path sends from
 * raw sockets). Returns 1 (neighbour known: MACs filled), 2 (no neighbour entry yet: use
 * bpf_redirect_neigh) or 0 (local, unreachable, too big, ...: pass up). */
static __always_inline int fib(struct __sk_buff *skb, struct bpf_fib_lookup *p,
			       __be32 src, __be32 dst, __u16 tot_len, __u8 proto, __u8 tos)
{
	long rc;

	__builtin_memset(p, 0, sizeof(*p));
	p->family = AF_INET_;
	p->tos = tos;
	p->l4_protocol = proto;
	p->tot_len = tot_len;
	p->ifindex = 1;		/* LOOPBACK_IFINDEX */
	p->ipv4_src = src;
	p->ipv4_dst = dst;
	rc = bpf_fib_lookup(skb, p, sizeof(*p), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return 1;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return 2;
	return 0;
}

static __always_inline int send(struct __sk_buff *skb, struct bpf_fib_lookup *p, int how)
{
	if (how == 1) {
		if (bpf_skb_store_bytes(skb, 0, p->dmac, 6, 0) ||
		    bpf_skb_store_bytes(skb, 6, p->smac, 6, 0))
			return drop_err();
		return bpf_redirect(p->ifindex, 0);
	}
	struct bpf_redir_neigh nh = { .nh_family = AF_INET_, .ipv4_nh = p->ipv4_dst };

	return bpf_redirect_neigh(p->ifindex, &nh, sizeof(nh), 0);
}

/* Drop Ethernet padding so the new outer length matches the IP packet. */
static __always_inline int trim(struct __sk_buff *skb, __u32 ip_len)
{
	if (skb->len > ETH_LEN + ip_len)
		return bpf_skb_change_tail(skb, ETH_LEN + ip_len, 0);
	return 0;
}

/* zlib's CRC-32 (reflected, polynomial 0xEDB88320), table-driven over the 13-byte flow
 * key: a short straight line for the verifier (read-only data, indices masked to 0..255) */
const volatile __u32 crc_table[256] = {
	0x00000000, 0x77073096, 0xee0e612c, 0x990951ba, 0x076dc419, 0x706af48f,
	0xe963a535, 0x9e6495a3, 0x0edb8832, 0x79dcb8a4, 0xe0d5e91e, 0x97d2d988,
	0x09b64c2b, 0x7eb17cbd, 0xe7b82d07, 0x90bf1d91, 0x1db71064, 0x6ab020f2,
	0xf3b97148, 0x84be41de, 0x1adad47d, 0x6ddde4eb, 0xf4d4b551, 0x83d385c7,
	0x136c9856, 0x646ba8c0, 0xfd62f97a, 0x8a65c9ec, 0x14015c4f, 0x63066cd9,
	0xfa0f3d63, 0x8d080df5, 0x3b6e20c8, 0x4c69105e, 0xd56041e4, 0xa2677172,
	0x3c03e4d1, 0x4b04d447, 0xd20d85fd, 0xa50ab56b, 0x35b5a8fa, 0x42b2986c,
	0xdbbbc9d6, 0xacbcf940, 0x32d86ce3, 0x45df5c75, 0xdcd60dcf, 0xabd13d59,
	0x26d930ac, 0x51de003a, 0xc8d75180, 0xbfd06116, 0x21b4f4b5, 0x56b3c423,
	0xcfba9599, 0xb8bda50f, 0x2802b89e, 0x5f058808, 0xc60cd9b2, 0xb10be924,
	0x2f6f7c87, 0x58684c11, 0xc1611dab, 0xb6662d3d, 0x76dc4190, 0x01db7106,
	0x98d220bc, 0xefd5102a, 0x71b18589, 0x06b6b51f, 0x9fbfe4a5, 0xe8b8d433,
	0x7807c9a2, 0x0f00f934, 0x9609a88e, 0xe10e9818, 0x7f6a0dbb, 0x086d3d2d,
	0x91646c97, 0xe6635c01, 0x6b6b51f4, 0x1c6c6162, 0x856530d8, 0xf262004e,
	0x6c0695ed, 0x1b01a57b, 0x8208f4c1, 0xf50fc457, 0x65b0d9c6, 0x12b7e950,
	0x8bbeb8ea, 0xfcb9887c, 0x62dd1ddf, 0x15da2d49, 0x8cd37cf3, 0xfbd44c65,
	0x4db26158, 0x3ab551ce, 0xa3bc0074, 0xd4bb30e2, 0x4adfa541, 0x3dd895d7,
	0xa4d1c46d, 0xd3d6f4fb, 0x4369e96a, 0x346ed9fc, 0xad678846, 0xda60b8d0,
	0x44042d73, 0x33031de5, 0xaa0a4c5f, 0xdd0d7cc9, 0x5005713c, 0x270241aa,
	0xbe0b1010, 0xc90c2086, 0x5768b525, 0x206f85b3, 0xb966d409, 0xce61e49f,
	0x5edef90e, 0x29d9c998, 0xb0d09822, 0xc7d7a8b4, 0x59b33d17, 0x2eb40d81,
	0xb7bd5c3b, 0xc0ba6cad, 0xedb88320, 0x9abfb3b6, 0x03b6e20c, 0x74b1d29a,
	0xead54739, 0x9dd277af, 0x04db2615, 0x73dc1683, 0xe3630b12, 0x94643b84,
	0x0d6d6a3e, 0x7a6a5aa8, 0xe40ecf0b, 0x9309ff9d, 0x0a00ae27, 0x7d079eb1,
	0xf00f9344, 0x8708a3d2, 0x1e01f268, 0x6906c2fe, 0xf762575d, 0x806567cb,
	0x196c3671, 0x6e6b06e7, 0xfed41b76, 0x89d32be0, 0x10da7a5a, 0x67dd4acc,
	0xf9b9df6f, 0x8ebeeff9, 0x17b7be43, 0x60b08ed5, 0xd6d6a3e8, 0xa1d1937e,
	0x38d8c2c4, 0x4fdff252, 0xd1bb67f1, 0xa6bc5767, 0x3fb506dd, 0x48b2364b,
	0xd80d2bda, 0xaf0a1b4c, 0x36034af6, 0x41047a60, 0xdf60efc3, 0xa867df55,
	0x316e8eef, 0x4669be79, 0xcb61b38c, 0xbc66831a, 0x256fd2a0, 0x5268e236,
	0xcc0c7795, 0xbb0b4703, 0x220216b9, 0x5505262f, 0xc5ba3bbe, 0xb2bd0b28,
	0x2bb45a92, 0x5cb36a04, 0xc2d7ffa7, 0xb5d0cf31, 0x2cd99e8b, 0x5bdeae1d,
	0x9b64c2b0, 0xec63f226, 0x756aa39c, 0x026d930a, 0x9c0906a9, 0xeb0e363f,
	0x72076785, 0x05005713, 0x95bf4a82, 0xe2b87a14, 0x7bb12bae, 0x0cb61b38,
	0x92d28e9b, 0xe5d5be0d, 0x7cdcefb7, 0x0bdbdf21, 0x86d3d2d4, 0xf1d4e242,
	0x68ddb3f8, 0x1fda836e, 0x81be16cd, 0xf6b9265b, 0x6fb077e1, 0x18b74777,
	0x88085ae6, 0xff0f6a70, 0x66063bca, 0x11010b5c, 0x8f659eff, 0xf862ae69,
	0x616bffd3, 0x166ccf45, 0xa00ae278, 0xd70dd2ee, 0x4e048354, 0x3903b3c2,
	0xa7672661, 0xd06016f7, 0x4969474d, 0x3e6e77db, 0xaed16a4a, 0xd9d65adc,
	0x40df0b66, 0x37d83bf0, 0xa9bcae53, 0xdebb9ec5, 0x47b2cf7f, 0x30b5ffe9,
	0xbdbdf21c, 0xcabac28a, 0x53b39330, 0x24b4a3a6, 0xbad03605, 0xcdd70693,
	0x54de5729, 0x23d967bf, 0xb3667a2e, 0xc4614ab8, 0x5d681b02, 0x2a6f2b94,
	0xb40bbe37, 0xc30c8ea1, 0x5a05df1b, 0x2d02ef8d
};

static __always_inline __u32 crc32_key(const __u8 *k, bool reverse)
{
	__u32 c = 0xffffffff;

#pragma unroll
	for (int i = 0; i < 13; i++)
		c = crc_table[(c ^ k[reverse ? 12 - i : i]) & 0xff] ^ (c >> 8);
	return ~c;
}

static __always_inline __u64 mix64(__u64 x)	/* splitmix64 finalizer */
{
	x += 0x9E3779B97F4A7C15ULL;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
	return x ^ (x >> 31);
}

struct pick_ctx {
	__u64 k;
	__u64 best;
	__u32 bi;
	__u32 n;
	__u64 salt[MAX_HOPS];
};

static long pick_step(__u64 i, void *ctx)
{
	struct pick_ctx *c = ctx;
	__u64 v;

	if (i >= c->n || i >= MAX_HOPS)
		return 1;
	v = mix64(c->k ^ c->salt[i & (MAX_HOPS - 1)]) >> 11;
	if (i == 0 || v > c->best) {
		c->best = v;
		c->bi = i;
	}
	return 0;
}

/* The userspace path's weighted rendezvous hashing (engine._Entry.pick) for next hops of
 * equal weight, where the highest score is the highest mix(key ^ salt): this computes the
 * key from the inner IPv4 5-tuple (ports 0 without L4 ports or in non-first fragments),
 * CRC-32 of the 13 key bytes and of them reversed as the two halves; 0 = cannot (pass up).
 */
static __attribute__((noinline)) __u64 fp_flow_key(struct __sk_buff *skb, __u32 inner)
{
	__u8 h[20], key[13] = {};
	__u8 pt[4] = {};

	if (!skb || bpf_skb_load_bytes(skb, inner, h, 20) || (h[0] >> 4) != 4)
		return 0;
	__builtin_memcpy(key, h + 12, 8);
	key[8] = h[9];
	if ((h[9] == IPPROTO_TCP || h[9] == IPPROTO_UDP || h[9] == IPPROTO_SCTP) &&
	    !(((h[6] & 0x1f) << 8) | h[7])) {
		__u32 l4 = inner + (h[0] & 0x0f) * 4;

		if (l4 + 4 <= skb->len && bpf_skb_load_bytes(skb, l4, pt, 4) == 0)
			__builtin_memcpy(key + 9, pt, 4);
	}
	return ((__u64)crc32_key(key, false) << 32) | crc32_key(key, true);
}

static __attribute__((noinline)) int sff(struct __sk_buff *skb, __u32 gen, __u32 slot, __be32 local)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_LEN;
	__u8 *g = data + ETH_LEN + 20;
	__u8 *nsh = g + 4;
	struct bpf_fib_lookup p;
	struct sff_key k;
	struct sff_val e, *ep;
	__u16 ip_len;
	__u8 b0, b1, ttl;
	int how;

	if ((void *)(nsh + 24) > data_end)
		return pass(ST_PASS_MALFORMED);
	if (g[0] || g[1])
		return pass(ST_PASS_GRE_FLAGS);
	if (g[2] != (GRE_PROTO_NSH >> 8) || g[3] != (GRE_PROTO_NSH & 0xff))
		return pass(ST_PASS_NOT_NSH);
	b0 = nsh[0];
	b1 = nsh[1];
	if (b0 >> 6)
		return pass(ST_PASS_NSH_VERSION);
	if (b0 & 0x20)
		return pass(ST_PASS_O_BIT);
	if ((nsh[2] & 0x0f) != 1 || (b1 & 0x3f) != NSH_MD1_LEN)
		return pass(ST_PASS_MD_TYPE);
	ttl = ((b0 & 0x0f) << 2) | (b1 >> 6);
	if (ttl <= 1)
		return pass(ST_PASS_TTL);
	ip_len = bpf_ntohs(ip->tot_len);
	if (ip_len < 20 + 4 + 24 || skb->len < ETH_LEN + ip_len)
		return pass(ST_PASS_MALFORMED);

	k.slot = slot;
	k.sp = *(__u32 *)(nsh + 4);
	ep = bpf_map_lookup_elem(&fp_sff, &k);
	if (!ep)
		return pass(ST_PASS_SFF_MISS);
	e = *ep;
	if (!slot_still(slot, gen))
		return pass(ST_PASS_TABLE_CHANGED);

	if (e.kind == KIND_FORWARD) {
		struct outer o;
		__u32 hop, hc;
		int i = 0;

		if (e.nhops > 1) {
			struct pick_ctx c = {};

			c.k = fp_flow_key(skb, ETH_LEN + ENCAP_LEN);
			if (!c.k)
				return pass(ST_PASS_MALFORMED);
			c.n = e.nhops;
			__builtin_memcpy(c.salt, e.salt, sizeof(c.salt));
			/* one verified callback instead of a path per hop (kernel >= 5.17) */
			bpf_loop(MAX_HOPS, pick_step, &c, 0);
			i = c.bi;
			data = (void *)(long)skb->data;
			data_end = (void *)(long)skb->data_end;
			nsh = data + ETH_LEN + 20 + 4;
			if ((void *)(nsh + 24) > data_end)
				return pass(ST_PASS_MALFORMED);
		}
		hop = e.hop[i & (MAX_HOPS - 1)];
		hc = e.hop_counter[i & (MAX_HOPS - 1)];
		how = fib(skb, &p, local, hop, ip_len, IPPROTO_GRE, 0);
		if (!how)
			return pass(ST_PASS_FIB);
		__builtin_memcpy(o.nsh, nsh, 24);
		ttl -= 1;
		o.nsh[0] = (b0 & 0xf0) | (ttl >> 2);
		o.nsh[1] = ((ttl & 3) << 6) | (b1 & 0x3f);
		o.gre_flags = 0;
		o.gre_proto = bpf_htons(GRE_PROTO_NSH);
		build_ip(&o.ip, ip_len, local, hop);
		if (trim(skb, ip_len) ||
		    bpf_skb_store_bytes(skb, ETH_LEN, &o, sizeof(o), BPF_F_RECOMPUTE_CSUM))
			return drop_err();
		count(e.counter, ip_len - ENCAP_LEN);
		count(hc, ip_len - ENCAP_LEN);
		pass(ST_SFF_FORWARD);
		return send(skb, &p, how);
	}
	if (e.kind == KIND_TERMINATE) {
		struct iphdr *in = (void *)(nsh + 24);
		__u16 in_len;

		if (nsh[3] != NSH_NP_IPV4)
			return pass(ST_PASS_NEXT_PROTO);
		if ((void *)(in + 1) > data_end)
			return pass(ST_PASS_MALFORMED);
		in_len = bpf_ntohs(in->tot_len);
		if (in->version != 4 || in->ihl < 5 || in_len + ENCAP_LEN > ip_len)
			return pass(ST_PASS_MALFORMED);
		/* delivered as the userspace path delivers it (a header-including raw
		 * socket): routed as sent by this host, inner packet unchanged */
		how = fib(skb, &p, in->saddr, in->daddr, in_len, in->protocol, in->tos);
		if (!how)
			return pass(ST_PASS_FIB);
		if (bpf_skb_adjust_room(skb, -ENCAP_LEN, BPF_ADJ_ROOM_MAC, 0))
			return drop_err();
		if (trim(skb, in_len))
			return drop_err();
		count(e.counter, in_len);
		pass(ST_SFF_TERMINATE);
		return send(skb, &p, how);
	}
	return pass(ST_PASS_SFF_MISS);
}

static __attribute__((noinline)) int classify(struct __sk_buff *skb, __u32 gen, __u32 slot, __be32 local)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_LEN;
	struct lpm_key k = { .prefixlen = 64, .slot = bpf_htonl(slot) };
	struct rule_bits *sb, *db;
	struct rule r = {}, *rp;
	struct bpf_fib_lookup p;
	struct outer o;
	__u16 sport = 0, dport = 0, ip_len;
	bool found = false;
	__u8 dscp;
	int how;

	if ((void *)(ip + 1) > data_end)
		return pass(ST_PASS_MALFORMED);
	ip_len = bpf_ntohs(ip->tot_len);
	if (ip_len < 20 || skb->len < ETH_LEN + ip_len)
		return pass(ST_PASS_MALFORMED);
	{
		struct if_key ik = { .slot = slot, .ifindex = skb->ingress_ifindex };
		struct addr_key ak = { .slot = slot, .addr = ip->daddr };

		if (!bpf_map_lookup_elem(&fp_cls_ifs, &ik))
			return pass(ST_PASS_NOT_CLASSIFIER_IF);
		if (skb->pkt_type != 0 /* PACKET_HOST */)
			return pass(ST_PASS_NOT_CLASSIFIER_IF);
		if (bpf_map_lookup_elem(&fp_local, &ak))
			return pass(ST_PASS_LOCAL);
	}
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP ||
	    ip->protocol == IPPROTO_SCTP) {
		__u16 *l4 = (void *)(ip + 1);

		if ((void *)(l4 + 2) > data_end)
			return pass(ST_PASS_MALFORMED);
		sport = bpf_ntohs(l4[0]);
		dport = bpf_ntohs(l4[1]);
	}
	dscp = ip->tos >> 2;
	k.addr = ip->saddr;
	sb = bpf_map_lookup_elem(&fp_cls_src, &k);
	if (!sb)
		return pass(ST_PASS_CLS_MISS);
	k.addr = ip->daddr;
	db = bpf_map_lookup_elem(&fp_cls_dst, &k);
	if (!db)
		return pass(ST_PASS_CLS_MISS);

#pragma unroll
	for (int w = 0; w < RULE_WORDS; w++) {
		__u64 m = sb->w[w] & db->w[w];

		for (int j = 0; j < 64 && m && !found; j++) {
			__u64 b = m & -m;
			__u32 idx = slot * MAX_RULES + w * 64 + bit_index(b);

			m &= m - 1;
			rp = bpf_map_lookup_elem(&fp_cls_rules, &idx);
			if (!rp || !rp->valid)
				continue;
			if (rp->ifindex && rp->ifindex != skb->ingress_ifindex)
				continue;
			if (rp->proto && rp->proto != ip->protocol)
				continue;
			if (rp->dscp != 0xff && rp->dscp != dscp)
				continue;
			if (rp->ports) {
				if (sport < rp->sport_lo || sport > rp->sport_hi ||
				    dport < rp->dport_lo || dport > rp->dport_hi)
					continue;
			}
			r = *rp;
			found = true;
		}
		if (found)
			break;
	}
	if (!found)
		return pass(ST_PASS_CLS_MISS);
	if (!slot_still(slot, gen))
		return pass(ST_PASS_TABLE_CHANGED);

	how = fib(skb, &p, local, r.first_hop, ip_len + ENCAP_LEN, IPPROTO_GRE, 0);
	if (!how)
		return pass(ST_PASS_FIB);

	build_ip(&o.ip, ip_len + ENCAP_LEN, local, r.first_hop);
	o.gre_flags = 0;
	o.gre_proto = bpf_htons(GRE_PROTO_NSH);
	__builtin_memset(o.nsh, 0, sizeof(o.nsh));
	o.nsh[0] = (r.ttl >> 2) & 0x0f;
	o.nsh[1] = ((r.ttl & 3) << 6) | NSH_MD1_LEN;
	o.nsh[2] = 1;			/* MD type 1 */
	o.nsh[3] = NSH_NP_IPV4;
	__builtin_memcpy(&o.nsh[4], &r.sp, 4);

	if (trim(skb, ip_len))
		return drop_err();
	if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_GRE))
		return drop_err();
	if (bpf_skb_store_bytes(skb, ETH_LEN, &o, sizeof(o), BPF_F_RECOMPUTE_CSUM))
		return drop_err();
	count(r.counter, ip_len);
	pass(ST_CLS_HIT);
	return send(skb, &p, how);
}

SEC("tc")
int fp_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0, gen, slot;
	__u32 *gp;
	struct slot_cfg *sc;
	__be32 local;
	struct iphdr *ip;
	void *data, *data_end;
	__u32 want;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return pass(ST_PASS_NOT_IPV4);
	gp = bpf_map_lookup_elem(&fp_gen, &zero);
	if (!gp || !*gp)
		return pass(ST_PASS_NO_TABLE);
	gen = *gp;
	slot = gen & 1;
	sc = bpf_map_lookup_elem(&fp_slot, &slot);
	if (!sc || sc->gen != gen)
		return pass(ST_PASS_TABLE_CHANGED);
	local = sc->local;
	if (skb->gso_size)
		return pass(ST_PASS_GSO);

	want = ETH_LEN + ENCAP_LEN + 20;
	if (want > skb->len)
		want = skb->len;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + want > data_end) {
		if (bpf_skb_pull_data(skb, want))
			return pass(ST_PASS_MALFORMED);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	ip = data + ETH_LEN;
	if ((void *)(ip + 1) > data_end)
		return pass(ST_PASS_MALFORMED);
	if (ip->version != 4)
		return pass(ST_PASS_MALFORMED);
	if (ip->ihl != 5)
		return pass(ST_PASS_IP_OPTIONS);
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return pass(ST_PASS_FRAGMENT);
	if (ip->protocol == IPPROTO_GRE && local && ip->daddr == local)
		return sff(skb, gen, slot, local);
	if (!local)
		return pass(ST_PASS_CLS_MISS);
	return classify(skb, gen, slot, local);
}

char LICENSE[] SEC("license") = "GPL";
