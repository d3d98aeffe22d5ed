"""diffusion_tf: DDPM (Ho, Jain, Abbeel 2020) on TensorFlow 2."""
from setuptools import find_packages, setup

setup(
    name='diffusion_tf',
    version='2.0.0',
    description='Denoising Diffusion Probabilistic Models, a faithful TensorFlow 2 port',
    url='https://arxiv.org/abs/2006.11239',
    packages=find_packages(include=['diffusion_tf', 'diffusion_tf.*']),
    package_data={'diffusion_tf.ops': ['*.cc', '*.h'],  # compiled on first use
                  'diffusion_tf.metrics': ['*.npz']},  # the digits feature network's weights
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.16',
        'tensorboard>=2.16',  # tf.summary's implementation
        'tensorflow-datasets>=4.9',
        'numpy>=1.24',
        'scipy>=1.10',
        'pillow>=9',
        'fire>=0.5',
        'tqdm>=4.60',
        'scikit-learn>=1.2',  # ships the built-in 8x8 digits data set
        'safetensors>=0.4',  # diffusers-format weights
        'huggingface_hub>=0.20',  # Hub models (pipelines.from_pretrained)
    ],
    extras_require={
        # docs/deployment.md: --format onnx converts with tf2onnx; the tests run the LiteRT
        # and ONNX files with these runtimes (they skip, saying so, without them).
        'export': ['tf2onnx>=1.16', 'onnxruntime>=1.17', 'ai-edge-litert>=1.0'],
        'hf': ['datasets>=2.14'],  # --dataset hf: data sets of the `datasets` library
        'test': ['pytest>=7', 'pytest-timeout>=2', 'tf2onnx>=1.16', 'onnxruntime>=1.17',
                 'ai-edge-litert>=1.0', 'datasets>=2.14'],
    },
)
