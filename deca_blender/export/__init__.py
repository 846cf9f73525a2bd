"""Exports for game engines: FBX (Unreal/Unity presets), glTF 2.0 .glb, and the wrinkle package."""
