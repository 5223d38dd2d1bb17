/*
 * iommufd-probe: what the host kernel's iommufd says about one VFIO device,
 * for the harness (harness/host/hwinfo.ts), as one JSON object on stdout.
 *
 *   iommufd-probe hw-info [--iommu PATH] CDEV
 *       IOMMU_GET_HW_INFO: dev_id, out_data_type, out_capabilities,
 *       out_max_pasid_log2, and the VT-d cap/ecap or SMMUv3 IDRs
 *   iommufd-probe hwpt-alloc [--iommu PATH] CDEV FLAGS...
 *       allocates an IOAS and asks IOMMU_HWPT_ALLOC for a HWPT on it with each
 *       FLAGS value (0x8, 9, ...), reporting the kernel's answer per value;
 *       every HWPT it gets is destroyed again
 *   iommufd-probe viommu-alloc [--iommu PATH] CDEV TYPE
 *       allocates an IOAS, a NEST_PARENT HWPT on it, and asks
 *       IOMMU_VIOMMU_ALLOC for a vIOMMU of TYPE (1: ARM_SMMUV3) on that
 *       parent: both answers reported (the SMMUv3 driver refuses a vIOMMU
 *       unless the SMMU has S2FWB or the root complex CANWBS in IORT)
 *
 * CDEV is a VFIO device cdev (/dev/vfio/devices/vfioN) of a device bound to
 * vfio-pci. Node cannot issue ioctls, hence this small program.
 *
 * On failure the JSON object has "error" (what failed, with the path),
 * "step" (usage, open-iommu, open-cdev, bind, get-hw-info, ioas-alloc) and
 * "errno"; the message also goes to stderr. Exit status: 0 done (a refused
 * HWPT_ALLOC is a result, not a failure), 2 bad usage, 3 a step failed.
 *
 * The uAPI is defined here rather than taken from <linux/iommufd.h>, so that
 * Debian 12's older headers do not matter. Layouts and numbers follow Linux
 * 7.2's include/uapi/linux/iommufd.h and vfio.h; every struct begins with its
 * own size, so older kernels accept the prefix they know.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* _IO(type, nr) on x86_64 and arm64 (asm-generic ioctl: direction none = 0, size 0). */
#define P_IO(type, nr) ((unsigned long)(((type) << 8) | (nr)))

#define IOMMUFD_TYPE ';'
#define IOMMUFD_CMD_DESTROY 0x80
#define IOMMUFD_CMD_IOAS_ALLOC 0x81
#define IOMMUFD_CMD_HWPT_ALLOC 0x89
#define IOMMUFD_CMD_GET_HW_INFO 0x8a
#define IOMMUFD_CMD_VIOMMU_ALLOC 0x90
#define IOMMU_DESTROY P_IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
#define IOMMU_IOAS_ALLOC P_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
#define IOMMU_HWPT_ALLOC P_IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
#define IOMMU_GET_HW_INFO P_IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
#define IOMMU_VIOMMU_ALLOC P_IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
#define IOMMU_HWPT_ALLOC_NEST_PARENT 0x1

#define VFIO_TYPE ';'
#define VFIO_BASE 100
#define VFIO_DEVICE_BIND_IOMMUFD P_IO(VFIO_TYPE, VFIO_BASE + 18)

struct iommu_destroy {
	uint32_t size;
	uint32_t id;
};

struct iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};

struct iommu_hwpt_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pt_id;
	uint32_t out_hwpt_id;
	uint32_t __reserved;
	uint32_t data_type;
	uint32_t data_len;
	uint64_t data_uptr __attribute__((aligned(8)));
	uint32_t fault_id;
	uint32_t __reserved2;
};

struct iommu_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len;
	uint64_t data_uptr __attribute__((aligned(8)));
	uint32_t out_data_type; /* in_data_type with IOMMU_HW_INFO_FLAG_INPUT_TYPE */
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	uint64_t out_capabilities __attribute__((aligned(8)));
};

struct iommu_hw_info_vtd {
	uint32_t flags;
	uint32_t __reserved;
	uint64_t cap_reg __attribute__((aligned(8)));
	uint64_t ecap_reg __attribute__((aligned(8)));
};

struct iommu_hw_info_arm_smmuv3 {
	uint32_t flags;
	uint32_t __reserved;
	uint32_t idr[6];
	uint32_t iidr;
	uint32_t aidr;
};

struct iommu_viommu_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t type;
	uint32_t dev_id;
	uint32_t hwpt_id;
	uint32_t out_viommu_id;
	uint32_t data_len;
	uint32_t __reserved;
	uint64_t data_uptr __attribute__((aligned(8)));
};

/* The 16-byte prefix every kernel with cdev support knows (newer ones add token_uuid_ptr behind a flag). */
struct vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid;
};

_Static_assert(sizeof(struct iommu_hwpt_alloc) == 48, "iommu_hwpt_alloc layout");
_Static_assert(sizeof(struct iommu_hw_info) == 40, "iommu_hw_info layout");
_Static_assert(sizeof(struct iommu_hw_info_vtd) == 24, "iommu_hw_info_vtd layout");
_Static_assert(sizeof(struct iommu_hw_info_arm_smmuv3) == 40, "iommu_hw_info_arm_smmuv3 layout");
_Static_assert(sizeof(struct iommu_viommu_alloc) == 40, "iommu_viommu_alloc layout");
_Static_assert(sizeof(struct vfio_device_bind_iommufd) == 16, "vfio_device_bind_iommufd layout");

enum { HW_INFO_TYPE_NONE = 0, HW_INFO_TYPE_INTEL_VTD = 1, HW_INFO_TYPE_ARM_SMMUV3 = 2, HW_INFO_TYPE_TEGRA241_CMDQV = 3, HW_INFO_TYPE_AMD = 4 };

static const char *hw_info_type_name(uint32_t t)
{
	switch (t) {
	case HW_INFO_TYPE_NONE: return "NONE";
	case HW_INFO_TYPE_INTEL_VTD: return "INTEL_VTD";
	case HW_INFO_TYPE_ARM_SMMUV3: return "ARM_SMMUV3";
	case HW_INFO_TYPE_TEGRA241_CMDQV: return "TEGRA241_CMDQV";
	case HW_INFO_TYPE_AMD: return "AMD";
	default: return "UNKNOWN";
	}
}

static const char *errno_name(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "UNKNOWN";
}

/* Paths come from the command line: escape what JSON needs escaped. */
static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static int fail(const char *step, const char *what, const char *path, int err)
{
	fprintf(stderr, "iommufd-probe: %s %s: %s\n", what, path, strerror(err));
	printf("{\"step\":");
	json_string(step);
	printf(",\"error\":");
	char msg[512];
	snprintf(msg, sizeof(msg), "%s %s: %s", what, path, strerror(err));
	json_string(msg);
	printf(",\"errno\":");
	json_string(errno_name(err));
	printf(",\"errno_num\":%d}\n", err);
	return 3;
}

static int usage(const char *problem)
{
	fprintf(stderr,
		"iommufd-probe: %s\n"
		"usage: iommufd-probe hw-info [--iommu PATH] /dev/vfio/devices/vfioN\n"
		"       iommufd-probe hwpt-alloc [--iommu PATH] /dev/vfio/devices/vfioN FLAGS...\n"
		"       iommufd-probe viommu-alloc [--iommu PATH] /dev/vfio/devices/vfioN TYPE\n",
		problem);
	printf("{\"step\":\"usage\",\"error\":");
	json_string(problem);
	printf("}\n");
	return 2;
}

/* FLAGS values: decimal or 0x hex, 32 bits. */
static int parse_flags(const char *s, uint32_t *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return -1;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *iommu_path = "/dev/iommu";
	const char *mode, *cdev;
	int i = 1;

	if (argc < 2)
		return usage("no mode given (hw-info, hwpt-alloc or viommu-alloc)");
	mode = argv[i++];
	if (!strcmp(mode, "-h") || !strcmp(mode, "--help")) {
		usage("help");
		return 0;
	}
	if (strcmp(mode, "hw-info") && strcmp(mode, "hwpt-alloc") && strcmp(mode, "viommu-alloc"))
		return usage("unknown mode (expected hw-info, hwpt-alloc or viommu-alloc)");
	if (i < argc && !strcmp(argv[i], "--iommu")) {
		if (i + 1 >= argc)
			return usage("--iommu needs a path");
		iommu_path = argv[i + 1];
		i += 2;
	}
	if (i >= argc)
		return usage("no VFIO device cdev given (/dev/vfio/devices/vfioN)");
	cdev = argv[i++];

	uint32_t flags_list[64];
	int nflags = 0;
	if (!strcmp(mode, "hwpt-alloc")) {
		if (i >= argc)
			return usage("hwpt-alloc needs at least one FLAGS value");
		for (; i < argc; i++) {
			if (nflags == 64)
				return usage("at most 64 FLAGS values");
			if (parse_flags(argv[i], &flags_list[nflags++]))
				return usage("a FLAGS value is not a 32-bit number (e.g. 0x9)");
		}
	} else if (!strcmp(mode, "viommu-alloc")) {
		if (i + 1 != argc)
			return usage("viommu-alloc takes one TYPE after the cdev (1: ARM_SMMUV3)");
		if (parse_flags(argv[i], &flags_list[0]))
			return usage("the vIOMMU TYPE is not a 32-bit number (e.g. 1)");
	} else if (i < argc) {
		return usage("hw-info takes no arguments after the cdev");
	}

	int iommufd = open(iommu_path, O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		return fail("open-iommu", "open", iommu_path, errno);
	int devfd = open(cdev, O_RDWR | O_CLOEXEC);
	if (devfd < 0)
		return fail("open-cdev", "open", cdev, errno);

	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	if (ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		return fail("bind", "VFIO_DEVICE_BIND_IOMMUFD", cdev, errno);

	if (!strcmp(mode, "hw-info")) {
		union {
			struct iommu_hw_info_vtd vtd;
			struct iommu_hw_info_arm_smmuv3 smmu;
			uint8_t raw[256];
		} data;
		memset(&data, 0, sizeof(data));
		struct iommu_hw_info info = {
			.size = sizeof(info),
			.dev_id = bind.out_devid,
			.data_len = sizeof(data),
			.data_uptr = (uint64_t)(uintptr_t)&data,
		};
		if (ioctl(iommufd, IOMMU_GET_HW_INFO, &info))
			return fail("get-hw-info", "IOMMU_GET_HW_INFO for", cdev, errno);
		printf("{\"cdev\":");
		json_string(cdev);
		printf(",\"dev_id\":%u,\"out_data_type\":%u,\"out_data_type_name\":\"%s\",\"data_len\":%u,"
		       "\"out_capabilities\":%" PRIu64 ",\"out_max_pasid_log2\":%u",
		       bind.out_devid, info.out_data_type, hw_info_type_name(info.out_data_type), info.data_len,
		       (uint64_t)info.out_capabilities, info.out_max_pasid_log2);
		if (info.out_data_type == HW_INFO_TYPE_INTEL_VTD)
			printf(",\"vtd\":{\"flags\":%u,\"cap_reg\":\"0x%" PRIx64 "\",\"ecap_reg\":\"0x%" PRIx64 "\"}",
			       data.vtd.flags, (uint64_t)data.vtd.cap_reg, (uint64_t)data.vtd.ecap_reg);
		if (info.out_data_type == HW_INFO_TYPE_ARM_SMMUV3) {
			printf(",\"smmuv3\":{\"flags\":%u,\"idr\":[", data.smmu.flags);
			for (int k = 0; k < 6; k++)
				printf("%s\"0x%08x\"", k ? "," : "", data.smmu.idr[k]);
			printf("],\"iidr\":\"0x%08x\",\"aidr\":\"0x%08x\"}", data.smmu.iidr, data.smmu.aidr);
		}
		printf("}\n");
		return 0;
	}

	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas))
		return fail("ioas-alloc", "IOMMU_IOAS_ALLOC on", iommu_path, errno);
	printf("{\"cdev\":");
	json_string(cdev);
	if (!strcmp(mode, "viommu-alloc")) {
		struct iommu_hwpt_alloc parent = {
			.size = sizeof(parent),
			.flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
			.dev_id = bind.out_devid,
			.pt_id = ioas.out_ioas_id,
		};
		printf(",\"dev_id\":%u,\"ioas_id\":%u,\"parent\":{\"flags\":\"0x%x\",", bind.out_devid, ioas.out_ioas_id, parent.flags);
		if (ioctl(iommufd, IOMMU_HWPT_ALLOC, &parent)) {
			int e = errno;
			printf("\"ok\":false,\"errno\":\"%s\",\"errno_num\":%d}}\n", errno_name(e), e);
			return 0;
		}
		printf("\"ok\":true,\"hwpt_id\":%u},\"viommu\":{\"type\":%u,", parent.out_hwpt_id, flags_list[0]);
		struct iommu_viommu_alloc v = {
			.size = sizeof(v),
			.type = flags_list[0],
			.dev_id = bind.out_devid,
			.hwpt_id = parent.out_hwpt_id,
		};
		if (ioctl(iommufd, IOMMU_VIOMMU_ALLOC, &v)) {
			int e = errno;
			printf("\"ok\":false,\"errno\":\"%s\",\"errno_num\":%d}}\n", errno_name(e), e);
		} else {
			printf("\"ok\":true,\"viommu_id\":%u}}\n", v.out_viommu_id);
		}
		/* Closing the fds frees the vIOMMU, the parent and the IOAS. */
		close(devfd);
		close(iommufd);
		return 0;
	}
	printf(",\"dev_id\":%u,\"ioas_id\":%u,\"results\":[", bind.out_devid, ioas.out_ioas_id);
	for (int k = 0; k < nflags; k++) {
		struct iommu_hwpt_alloc hwpt = {
			.size = sizeof(hwpt),
			.flags = flags_list[k],
			.dev_id = bind.out_devid,
			.pt_id = ioas.out_ioas_id,
		};
		printf("%s{\"flags\":\"0x%x\",", k ? "," : "", flags_list[k]);
		if (ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt)) {
			int e = errno;
			printf("\"ok\":false,\"errno\":\"%s\",\"errno_num\":%d}", errno_name(e), e);
		} else {
			struct iommu_destroy d = { .size = sizeof(d), .id = hwpt.out_hwpt_id };
			int destroyed = ioctl(iommufd, IOMMU_DESTROY, &d) == 0;
			printf("\"ok\":true,\"hwpt_id\":%u,\"destroyed\":%s}", hwpt.out_hwpt_id, destroyed ? "true" : "false");
		}
	}
	printf("]}\n");
	/* Closing the fds unbinds the device and frees the IOAS. */
	close(devfd);
	close(iommufd);
	return 0;
}
