"""Scene walks (SceneScape / Text2Room): geometry injected into image models frame by frame.

    models.py     what a scene walk asks of its models: an Inpainter and a DepthEstimator
    rooms.py      the built-in procedural rooms and their renders (the offline prior's truth)
    room_prior.py the closed-form inpainter and depth of a posed RGB-D set (built-in or the user's)
    inpainting.py Stable Diffusion inpainting through diffusers
    depth_models.py monocular depth through transformers
    alignment.py  predicted depth aligned to what the scene already knows
    scene_mesh.py the growing scene: rendered, extended by a frame's new pixels, kept bounded
    paths.py      camera paths: Blender cameras, preset moves
"""
