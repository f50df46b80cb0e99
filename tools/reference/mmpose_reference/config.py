# mmpose 0.x config for the reference run only (never imported by grpose): HigherHRNet-W48, AE,
# UDP, the COCO test settings the papers load (the field's detector: docs/evaluation.md).
model = dict(
    type='AssociativeEmbedding', pretrained=None,
    backbone=dict(type='HRNet', in_channels=3, extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4,),
                    num_channels=(64,)),
        stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4),
                    num_channels=(48, 96)),
        stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4),
                    num_channels=(48, 96, 192)),
        stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                    num_channels=(48, 96, 192, 384)))),
    keypoint_head=dict(
        type='AEHigherResolutionHead', in_channels=48, num_joints=17, tag_per_joint=True,
        extra=dict(final_conv_kernel=1), num_deconv_layers=1, num_deconv_filters=[48],
        num_deconv_kernels=[4], num_basic_blocks=4, cat_output=[True], with_ae_loss=[True, False],
        loss_keypoint=dict(type='MultiLossFactory', num_joints=17, num_stages=2,
                           ae_loss_type='exp', with_ae_loss=[True, False],
                           push_loss_factor=[0.001, 0.001], pull_loss_factor=[0.001, 0.001],
                           with_heatmaps_loss=[True, True], heatmaps_loss_factor=[1.0, 1.0])),
    train_cfg=dict(),
    test_cfg=dict(num_joints=17, max_num_people=30, scale_factor=[1], with_heatmaps=[True, True],
                  with_ae=[True, False], project2image=False, align_corners=True, nms_kernel=5,
                  nms_padding=2, tag_per_joint=True, detection_threshold=0.1, tag_threshold=1,
                  use_detection_val=True, ignore_too_much=False, adjust=True, refine=True,
                  flip_test=True, use_udp=True))
data_cfg = dict(image_size=512, base_size=256, base_sigma=2, heatmap_size=[128, 256],
                num_joints=17, num_output_channels=17, inference_channel=list(range(17)),
                num_scales=2, scale_aware_sigma=False, dataset_channel=[list(range(17))])
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='BottomUpGetImgSize', test_scale_factor=[1], use_udp=True),
    dict(type='BottomUpResizeAlign', use_udp=True, transforms=[
        dict(type='ToTensor'),
        dict(type='NormalizeTensor', mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]),
    dict(type='Collect', keys=['img'], meta_keys=['image_file', 'aug_data', 'test_scale_factor',
                                                  'base_size', 'center', 'scale', 'flip_index']),
]
data = dict(test=dict(type='BottomUpCocoDataset', ann_file='', img_prefix='', data_cfg=data_cfg,
                      pipeline=test_pipeline))
