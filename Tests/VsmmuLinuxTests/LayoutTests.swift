import CVsmmuUAPI
import Testing

/// Every uAPI struct's size and field offsets against the layouts of docs/kernel-interface.md.
@Test func structSizes() {
    #expect(MemoryLayout<vsmmu_iommu_destroy>.size == 8)
    #expect(MemoryLayout<vsmmu_iommu_ioas_alloc>.size == 12)
    #expect(MemoryLayout<vsmmu_iommu_iova_range>.size == 16)
    #expect(MemoryLayout<vsmmu_iommu_ioas_iova_ranges>.size == 32)
    #expect(MemoryLayout<vsmmu_iommu_ioas_map>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_ioas_map_file>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_ioas_unmap>.size == 24)
    #expect(MemoryLayout<vsmmu_iommu_hwpt_alloc>.size == 48)
    #expect(MemoryLayout<vsmmu_iommu_option>.size == 24)
    #expect(MemoryLayout<vsmmu_iommu_option>.offset(of: \.val64) == 16)
    #expect(MemoryLayout<vsmmu_iommu_option>.offset(of: \.object_id) == 12)
    #expect(MemoryLayout<vsmmu_iommu_hw_info>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_hw_info_arm_smmuv3>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_hw_info_tegra241_cmdqv>.size == 8)
    #expect(MemoryLayout<vsmmu_iommu_hw_info_vtd>.size == 24)
    #expect(MemoryLayout<vsmmu_iommu_viommu_alloc>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_viommu_tegra241_cmdqv>.size == 16)
    #expect(MemoryLayout<vsmmu_iommu_vdevice_alloc>.size == 24)
    #expect(MemoryLayout<vsmmu_iommu_veventq_alloc>.size == 32)
    #expect(MemoryLayout<vsmmu_iommu_hw_queue_alloc>.size == 40)
    #expect(MemoryLayout<vsmmu_iommu_hwpt_arm_smmuv3>.size == 16)
    #expect(MemoryLayout<vsmmu_iommu_test_cmd>.size == 72)
    #expect(MemoryLayout<vsmmu_vfio_device_bind_iommufd>.size == 24)
    #expect(MemoryLayout<vsmmu_vfio_device_attach_iommufd_pt>.size == 16)
    #expect(MemoryLayout<vsmmu_vfio_device_detach_iommufd_pt>.size == 12)
    #expect(MemoryLayout<vsmmu_vfio_device_info>.size == 24)
}

func off<T>(_ k: PartialKeyPath<T>) -> Int? { MemoryLayout<T>.offset(of: k) }

@Test func fieldOffsets() {
    #expect([off(\vsmmu_iommu_destroy.size), off(\vsmmu_iommu_destroy.id)] == [0, 4])
    #expect([off(\vsmmu_iommu_ioas_alloc.flags), off(\vsmmu_iommu_ioas_alloc.out_ioas_id)] == [4, 8])
    #expect([off(\vsmmu_iommu_ioas_iova_ranges.ioas_id), off(\vsmmu_iommu_ioas_iova_ranges.num_iovas), off(\vsmmu_iommu_ioas_iova_ranges.__reserved),
             off(\vsmmu_iommu_ioas_iova_ranges.allowed_iovas), off(\vsmmu_iommu_ioas_iova_ranges.out_iova_alignment)] == [4, 8, 12, 16, 24])
    #expect([off(\vsmmu_iommu_ioas_map.flags), off(\vsmmu_iommu_ioas_map.ioas_id), off(\vsmmu_iommu_ioas_map.__reserved),
             off(\vsmmu_iommu_ioas_map.user_va), off(\vsmmu_iommu_ioas_map.length), off(\vsmmu_iommu_ioas_map.iova)] == [4, 8, 12, 16, 24, 32])
    #expect([off(\vsmmu_iommu_ioas_map_file.fd), off(\vsmmu_iommu_ioas_map_file.start), off(\vsmmu_iommu_ioas_map_file.length),
             off(\vsmmu_iommu_ioas_map_file.iova)] == [12, 16, 24, 32])
    #expect([off(\vsmmu_iommu_ioas_unmap.ioas_id), off(\vsmmu_iommu_ioas_unmap.iova), off(\vsmmu_iommu_ioas_unmap.length)] == [4, 8, 16])
    #expect([off(\vsmmu_iommu_hwpt_alloc.flags), off(\vsmmu_iommu_hwpt_alloc.dev_id), off(\vsmmu_iommu_hwpt_alloc.pt_id),
             off(\vsmmu_iommu_hwpt_alloc.out_hwpt_id), off(\vsmmu_iommu_hwpt_alloc.__reserved), off(\vsmmu_iommu_hwpt_alloc.data_type),
             off(\vsmmu_iommu_hwpt_alloc.data_len), off(\vsmmu_iommu_hwpt_alloc.data_uptr), off(\vsmmu_iommu_hwpt_alloc.fault_id),
             off(\vsmmu_iommu_hwpt_alloc.__reserved2)] == [4, 8, 12, 16, 20, 24, 28, 32, 40, 44])
    #expect([off(\vsmmu_iommu_hw_info.flags), off(\vsmmu_iommu_hw_info.dev_id), off(\vsmmu_iommu_hw_info.data_len),
             off(\vsmmu_iommu_hw_info.data_uptr), off(\vsmmu_iommu_hw_info.data_type), off(\vsmmu_iommu_hw_info.out_max_pasid_log2),
             off(\vsmmu_iommu_hw_info.__reserved), off(\vsmmu_iommu_hw_info.out_capabilities)] == [4, 8, 12, 16, 24, 28, 29, 32])
    #expect([off(\vsmmu_iommu_hw_info_arm_smmuv3.idr), off(\vsmmu_iommu_hw_info_arm_smmuv3.iidr), off(\vsmmu_iommu_hw_info_arm_smmuv3.aidr)] == [8, 32, 36])
    #expect([off(\vsmmu_iommu_hw_info_tegra241_cmdqv.version), off(\vsmmu_iommu_hw_info_tegra241_cmdqv.log2vcmdqs),
             off(\vsmmu_iommu_hw_info_tegra241_cmdqv.log2vsids)] == [4, 5, 6])
    #expect([off(\vsmmu_iommu_hw_info_vtd.cap_reg), off(\vsmmu_iommu_hw_info_vtd.ecap_reg)] == [8, 16])
    #expect([off(\vsmmu_iommu_viommu_alloc.type), off(\vsmmu_iommu_viommu_alloc.dev_id), off(\vsmmu_iommu_viommu_alloc.hwpt_id),
             off(\vsmmu_iommu_viommu_alloc.out_viommu_id), off(\vsmmu_iommu_viommu_alloc.data_len), off(\vsmmu_iommu_viommu_alloc.__reserved),
             off(\vsmmu_iommu_viommu_alloc.data_uptr)] == [8, 12, 16, 20, 24, 28, 32])
    #expect([off(\vsmmu_iommu_vdevice_alloc.viommu_id), off(\vsmmu_iommu_vdevice_alloc.dev_id), off(\vsmmu_iommu_vdevice_alloc.out_vdevice_id),
             off(\vsmmu_iommu_vdevice_alloc.virt_id)] == [4, 8, 12, 16])
    #expect([off(\vsmmu_iommu_veventq_alloc.viommu_id), off(\vsmmu_iommu_veventq_alloc.type), off(\vsmmu_iommu_veventq_alloc.veventq_depth),
             off(\vsmmu_iommu_veventq_alloc.out_veventq_id), off(\vsmmu_iommu_veventq_alloc.out_veventq_fd), off(\vsmmu_iommu_veventq_alloc.__reserved)] == [8, 12, 16, 20, 24, 28])
    #expect([off(\vsmmu_iommu_hw_queue_alloc.viommu_id), off(\vsmmu_iommu_hw_queue_alloc.type), off(\vsmmu_iommu_hw_queue_alloc.index),
             off(\vsmmu_iommu_hw_queue_alloc.out_hw_queue_id), off(\vsmmu_iommu_hw_queue_alloc.nesting_parent_iova),
             off(\vsmmu_iommu_hw_queue_alloc.length)] == [8, 12, 16, 20, 24, 32])
    #expect([off(\vsmmu_iommu_test_cmd.op), off(\vsmmu_iommu_test_cmd.id), off(\vsmmu_iommu_test_cmd.__reserved), off(\vsmmu_iommu_test_cmd.last)] == [4, 8, 12, 64])
    #expect([off(\vsmmu_vfio_device_bind_iommufd.flags), off(\vsmmu_vfio_device_bind_iommufd.iommufd), off(\vsmmu_vfio_device_bind_iommufd.out_devid),
             off(\vsmmu_vfio_device_bind_iommufd.token_uuid_ptr)] == [4, 8, 12, 16])
    #expect([off(\vsmmu_vfio_device_attach_iommufd_pt.flags), off(\vsmmu_vfio_device_attach_iommufd_pt.pt_id), off(\vsmmu_vfio_device_attach_iommufd_pt.pasid)] == [4, 8, 12])
    #expect([off(\vsmmu_vfio_device_detach_iommufd_pt.flags), off(\vsmmu_vfio_device_detach_iommufd_pt.pasid)] == [4, 8])
    #expect([off(\vsmmu_vfio_device_info.flags), off(\vsmmu_vfio_device_info.num_regions), off(\vsmmu_vfio_device_info.num_irqs),
             off(\vsmmu_vfio_device_info.cap_offset)] == [4, 8, 12, 16])
}

@Test func requestNumbersArePlainIO() {
    // _IO(';', nr): direction 0, size 0 (docs/kernel-interface.md §1.1)
    #expect(VSMMU_IOMMU_DESTROY == 0x3B80)
    #expect(VSMMU_IOMMU_HWPT_ALLOC == 0x3B89)
    #expect(VSMMU_IOMMU_VIOMMU_ALLOC == 0x3B90)
    #expect(VSMMU_IOMMU_VEVENTQ_ALLOC == 0x3B93)
    #expect(VSMMU_IOMMU_TEST_CMD == 0x3BA0)
    #expect(VSMMU_VFIO_DEVICE_BIND_IOMMUFD == 0x3B76)
    #expect(VSMMU_VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3B77)
    #expect(VSMMU_VFIO_DEVICE_DETACH_IOMMUFD_PT == 0x3B78)
    #expect(VSMMU_VFIO_DEVICE_GET_INFO == 0x3B6B)
}
